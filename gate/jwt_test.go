package gate

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestClaimsFastDecodeMatchesEncodingJSON: wherever the fast decoder of
// a token's claims answers, it sets exactly what encoding/json sets, and
// it answers for the claims app-servers mint (MintToken's shape); the rest
// is left to encoding/json.
func TestClaimsFastDecodeMatchesEncodingJSON(t *testing.T) {
	cases := []struct {
		raw  string
		fast bool // the fast path must take it
	}{
		{`{"app":1,"sub":"b1234567-000042","exp":1764500000,"iat":1764496400}`, true},
		{`{"sub":"alice","app":1,"exp":1764500000}`, true},
		{` { "sub" : "alice" ,	"app":65535,` + "\n" + `"exp":1764500000 , "nbf":0 } `, true},
		{`{}`, true},
		{`{"exp":999999999999999}`, true},
		{`{"app":0}`, true},
		{`{"sub":""}`, true},
		{`{"sub":"a~b` + "\x7f" + `"}`, true},
		{`{"app":65536,"sub":"alice"}`, false},
		{`{"app":70000}`, false},
		{`{"app":-1}`, false},
		{`{"app":01}`, false},
		{`{"app":1.0}`, false},
		{`{"app":1e0}`, false},
		{`{"exp":1764500000.5}`, false},
		{`{"exp":1764500000e0}`, false},
		{`{"exp":1E9}`, false},
		{`{"exp":-5}`, false},
		{`{"exp":"1764500000"}`, false},
		{`{"exp":null}`, false},
		{`{"exp":1000000000000000}`, false},
		{`{"exp":12345678901234567890}`, false},
		{`{"sub":null}`, false},
		{`{"sub":"al\"ice"}`, false},
		{`{"sub":"al\u0069ce"}`, false},
		{`{"sub":"caf` + "\xc3\xa9" + `"}`, false},
		{`{"sub":"bad` + "\xff" + `"}`, false},
		{`{"sub":"tab` + "\t" + `"}`, false},
		{`{"Sub":"alice"}`, false},
		{`{"SUB":"alice","sub":"bob"}`, false},
		{`{"sub":"alice","sub":"bob"}`, false},
		{`{"exp":1,"exp":2}`, false},
		{`{"aud":"x"}`, false},
		{`{"iss":"x","jti":"y"}`, false},
		{`{"sub":"alice",}`, false},
		{`{"sub":"alice"} x`, false},
		{`{"sub":"alice"}{}`, false},
		{`{"sub":"alice"`, false},
		{`{"sub":"alice`, false},
		{`{"sub" "alice"}`, false},
		{`{"app":1x}`, false},
		{`{"app":}`, false},
		{`[]`, false},
		{`null`, false},
		{``, false},
		{`{`, false},
	}
	for _, tc := range cases {
		var fast, ref tokenClaims
		ok := decodeClaimsFast([]byte(tc.raw), &fast)
		if ok != tc.fast {
			t.Errorf("%q: fast path %v, want %v", tc.raw, ok, tc.fast)
		}
		if !ok {
			continue
		}
		if err := json.Unmarshal([]byte(tc.raw), &ref); err != nil {
			t.Errorf("%q: the fast path accepted what encoding/json refuses: %v", tc.raw, err)
			continue
		}
		if !reflect.DeepEqual(fast, ref) {
			t.Errorf("%q: fast path %+v, encoding/json %+v", tc.raw, fast, ref)
		}
	}
}

// FuzzClaimsFastDecode: on any input the fast path takes, encoding/json
// decodes the same claims.
func FuzzClaimsFastDecode(f *testing.F) {
	f.Add([]byte(`{"app":1,"sub":"b1234567-000042","exp":1764500000,"iat":1764496400}`))
	f.Add([]byte(`{"sub":"alice","app":1,"exp":1764500000,"nbf":3}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var fast, ref tokenClaims
		if !decodeClaimsFast(raw, &fast) {
			return
		}
		if err := json.Unmarshal(raw, &ref); err != nil {
			t.Fatalf("%q: the fast path accepted what encoding/json refuses: %v", raw, err)
		}
		if !reflect.DeepEqual(fast, ref) {
			t.Fatalf("%q: fast path %+v, encoding/json %+v", raw, fast, ref)
		}
	})
}
