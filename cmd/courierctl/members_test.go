package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/courier-im/courier/messages/apipb"
)

// TestMemberStatesAreDocumented: every STATE `courierctl members` can
// print is listed in docs/operating.md's section on it (it listed three;
// an operator seeing `draining` or `warning` had nothing to read).
// The states are what memberState makes of every combination of the
// flags and of the health values a provider gives: membership's passing,
// warning, critical, Consul's maintenance and "" (a check status Consul
// does not know; api.HealthChecks.AggregatedStatus).
func TestMemberStatesAreDocumented(t *testing.T) {
	text, err := os.ReadFile(filepath.Join("..", "..", "docs", "operating.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(text)
	start := strings.Index(section, "### courierctl members")
	if start < 0 {
		t.Fatal(`docs/operating.md has no "### courierctl members" section`)
	}
	section = section[start+1:]
	if end := strings.Index(section, "\n#"); end >= 0 {
		section = section[:end]
	}
	states := map[string]bool{}
	for _, health := range []string{"passing", "warning", "critical", "maintenance", ""} {
		for bits := range 8 {
			m := &apipb.Member{Health: health, Live: bits&1 != 0, Draining: bits&2 != 0, Blocked: bits&4 != 0}
			// Live is passing (or a grace) and not blocked
			// (membership.Member.Live): the others do not occur.
			if (m.Live && m.Blocked) || (!m.Live && !m.Blocked && health == "passing") {
				continue
			}
			states[memberState(m)] = true
		}
	}
	for s := range states {
		if strings.TrimSpace(s) == "" {
			t.Errorf("a blank state is printed")
		}
		if !strings.Contains(section, "`"+s+"`") {
			t.Errorf("docs/operating.md, courierctl members: state `%s` is not listed", s)
		}
	}
}
