package messages_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages"
)

// vectorsFile holds the protocol's test vectors, for Courier's codec and
// for client teams in other languages.
const vectorsFile = "../docs/protocol-vectors.json"

type vectors struct {
	JWT struct {
		Secret     string `json:"secret"`
		HeaderJSON string `json:"header_json"`
		ClaimsJSON string `json:"claims_json"`
		Token      string `json:"token"`
	} `json:"jwt"`
	Frames []struct {
		Name   string `json:"name"`
		InDoc  bool   `json:"in_doc"`
		Header struct {
			Version uint8  `json:"version"`
			Cmd     string `json:"cmd"`
			Flags   uint8  `json:"flags"`
			AppCode uint16 `json:"appcode"`
			MsgType uint16 `json:"msgtype"`
			Seq     uint32 `json:"seq"`
			Length  uint32 `json:"length"`
		} `json:"header"`
		Body json.RawMessage `json:"body"`
		Hex  string          `json:"hex"`
	} `json:"frames"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	b, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", vectorsFile, err)
	}
	if len(v.Frames) == 0 {
		t.Fatalf("%s: no frames", vectorsFile)
	}
	return v
}

// TestGoldenFrames decodes every frame of the vectors with the real codec
// and encodes its header and body back to the same bytes.
func TestGoldenFrames(t *testing.T) {
	z, err := messages.NewZstd(messages.DefaultMaxBody)
	if err != nil {
		t.Fatal(err)
	}
	cmds := map[string]messages.Cmd{}
	for _, c := range messages.Cmds() {
		cmds[c.String()] = c
	}
	for _, f := range loadVectors(t).Frames {
		t.Run(f.Name, func(t *testing.T) {
			raw, err := hex.DecodeString(f.Hex)
			if err != nil {
				t.Fatal(err)
			}
			cmd, ok := cmds[f.Header.Cmd]
			if !ok {
				t.Fatalf("unknown command %q", f.Header.Cmd)
			}
			want := messages.Header{Version: f.Header.Version, Cmd: cmd, Flags: f.Header.Flags, AppCode: f.Header.AppCode,
				MsgType: f.Header.MsgType, Seq: f.Header.Seq, Length: f.Header.Length}
			h, err := messages.ParseHeader(raw, messages.DefaultMaxBody)
			if err != nil || h != want {
				t.Fatalf("header %+v, %v; want %+v", h, err, want)
			}
			if int(h.Length) != len(raw)-messages.HeaderSize {
				t.Fatalf("length %d, but %d body bytes", h.Length, len(raw)-messages.HeaderSize)
			}
			body := raw[messages.HeaderSize:]
			if h.Compressed() {
				if body, err = z.Decompress(nil, body); err != nil {
					t.Fatalf("decompress: %v", err)
				}
			}
			got, err := messages.DecodeBody(cmd, body)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			wantMsg := messages.NewBody(cmd)
			if string(f.Body) == "null" {
				if wantMsg != nil || got != nil {
					t.Fatalf("body: %v, want none", got)
				}
			} else {
				if wantMsg == nil {
					t.Fatalf("%v has no body, the vector has one", cmd)
				}
				if err := protojson.Unmarshal(f.Body, wantMsg); err != nil {
					t.Fatalf("vector body: %v", err)
				}
				if !proto.Equal(got, wantMsg) {
					t.Fatalf("body %v, want %v", got, wantMsg)
				}
			}
			// Encode from the vector's header and body.
			if h.Compressed() {
				b, _ := proto.Marshal(wantMsg)
				again, err := z.Decompress(nil, z.Compress(nil, b))
				if err != nil || !bytes.Equal(again, body) {
					t.Fatalf("our compression does not round-trip the body: %v", err)
				}
				return
			}
			enc, err := messages.AppendMessage(nil, messages.Header{Cmd: cmd, Flags: want.Flags, AppCode: want.AppCode,
				MsgType: want.MsgType, Seq: want.Seq}, wantMsg)
			if err != nil || !bytes.Equal(enc, raw) {
				t.Fatalf("encoded\n%x, want\n%x (%v)", enc, raw, err)
			}
		})
	}
}

// TestGoldenJWT re-signs the example token from its parts.
func TestGoldenJWT(t *testing.T) {
	j := loadVectors(t).JWT
	b64 := base64.RawURLEncoding
	signing := b64.EncodeToString([]byte(j.HeaderJSON)) + "." + b64.EncodeToString([]byte(j.ClaimsJSON))
	mac := hmac.New(sha256.New, []byte(j.Secret))
	mac.Write([]byte(signing))
	if tok := signing + "." + b64.EncodeToString(mac.Sum(nil)); tok != j.Token {
		t.Fatalf("token\n%s, want\n%s", tok, j.Token)
	}
}

var dumpBlock = regexp.MustCompile("(?s)```\n(00000000  .*?)```")

// TestGoldenDoc fails when docs/protocol.md's worked examples and the
// vectors differ: every hex dump in the document is a vector marked
// in_doc, printed exactly as hexdump -C (encoding/hex.Dump) prints it,
// after a sentence giving its size; every in_doc vector is in the
// document; and the example JWT with its parts is there too.
func TestGoldenDoc(t *testing.T) {
	v := loadVectors(t)
	b, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	blocks := dumpBlock.FindAllStringSubmatchIndex(doc, -1)
	inDoc := map[string]bool{}
	for _, m := range blocks {
		inDoc[doc[m[2]:m[3]]] = true
	}
	n := 0
	for _, f := range v.Frames {
		if !f.InDoc {
			continue
		}
		n++
		raw, _ := hex.DecodeString(f.Hex)
		dump := hex.Dump(raw)
		if !inDoc[dump] {
			t.Errorf("vector %s is not in docs/protocol.md; its dump is:\n%s", f.Name, dump)
			continue
		}
		// The sentence before the block gives its size.
		i := strings.Index(doc, "```\n"+dump)
		prefix := strings.TrimRight(doc[:i], "\n")
		before := prefix[max(0, strings.LastIndex(prefix, "\n\n")):]
		if !strings.Contains(before, fmt.Sprintf("%d bytes", len(raw))) {
			t.Errorf("vector %s: the text before its dump does not say %d bytes: %q", f.Name, len(raw), before)
		}
	}
	if n != len(blocks) {
		t.Errorf("docs/protocol.md has %d hex dumps, the vectors mark %d in_doc: each dump must be a vector", len(blocks), n)
	}
	for _, s := range []string{v.JWT.Token, v.JWT.Secret, v.JWT.HeaderJSON, v.JWT.ClaimsJSON} {
		if !strings.Contains(doc, s) {
			t.Errorf("docs/protocol.md does not show %q of the example JWT", s)
		}
	}
}
