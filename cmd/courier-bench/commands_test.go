package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/courier-im/courier/cmd/courier-bench/internal/bench"
)

// TestFinish: loss fails the run unless --allow-loss; every other failed
// check fails it regardless, and the error names each; a run with
// neither (refusals under overload included: they are no failure) passes.
func TestFinish(t *testing.T) {
	cases := []struct {
		name      string
		r         bench.Result
		allowLoss bool
		want      string // in the error; "": none
	}{
		{"clean", bench.Result{}, false, ""},
		{"lost", bench.Result{Lost: 3}, false, "3 messages accepted by the platform were never received"},
		{"lost, allowed", bench.Result{Lost: 3}, true, ""},
		{"a check failed", bench.Result{Failures: []string{"2 pushes failed with another status than RESOURCE_EXHAUSTED"}}, true,
			"2 pushes failed with another status"},
		{"both", bench.Result{Lost: 1, Failures: []string{"4 stored messages still unacknowledged"}}, false,
			"1 messages accepted by the platform were never received; 4 stored messages still unacknowledged"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := common{allowLoss: tc.allowLoss}
			cmd := &cobra.Command{}
			var out bytes.Buffer
			cmd.SetOut(&out)
			err := c.finish(cmd, &tc.r, nil)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var failed errFailed
			if !errors.As(err, &failed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want an errFailed with %q", err, tc.want)
			}
			for _, f := range tc.r.Failures {
				if !strings.Contains(out.String(), "FAILED: "+f) {
					t.Fatalf("the summary does not say %q:\n%s", f, out.String())
				}
			}
		})
	}
}
