package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/courier-im/courier/cluster/node"
)

// TestEverySettingIsDocumented: every flag of courier (each also a
// COURIER_* variable and a YAML key) is in a settings table of
// docs/operating.md with its default, and every setting such a table
// names exists. A settings table is a Markdown table with a column whose
// header starts with "setting" and one whose header starts with
// "default". The failures say what to add where.
func TestEverySettingIsDocumented(t *testing.T) {
	const doc = "docs/operating.md"
	cfg := node.DefaultConfig()
	fs := newFlagSet(&cfg, &cmdFlags{})
	text, err := os.ReadFile(filepath.Join("..", "..", doc))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	documented, problems := checkSettingsTables(string(text), fs, host)
	for _, p := range problems {
		t.Errorf("%s:%s", doc, p)
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if documented[f.Name] {
			return
		}
		def := "`" + f.DefValue + "`"
		if f.DefValue == "" || f.DefValue == "[]" {
			def = "none"
		}
		t.Errorf(`%s: setting %q (flag --%s, env %s, YAML key %s) is in no settings table with its default: add a row to its group's table under "### Every setting": `+"| `%s` | `%s` | %s | <what it does, its unit, what happens beyond it> |",
			doc, f.Name, f.Name, node.EnvName(f.Name), f.Name, f.Name, node.EnvName(f.Name), def)
	})
}

// TestSettingsTableCheck: the checker finds what it must (a missing row,
// a wrong default, a wrong variable, a setting that no longer exists) and
// accepts the forms the docs use.
func TestSettingsTableCheck(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.Duration("a.timeout", 5*time.Second, "")
	fs.Int("a.max-bytes", 64<<10, "")
	fs.Bool("a.on", false, "")
	fs.String("a.addr", "", "")
	fs.String("name", "myhost", "")
	fs.Int("b.one", 1, "")
	fs.Int("b.two", 2, "")
	fs.Int("c.missing", 3, "")
	doc := "intro\n\n" +
		"| setting | env | default | meaning |\n|---|---|---|---|\n" +
		"| `a.timeout` | `COURIER_A_TIMEOUT` | `5s` | x |\n" +
		"| `--a.max-bytes` (`COURIER_A_MAX_BYTES`) | | 64 KiB | x |\n" +
		"| `a.on` | `COURIER_A_ON` | false | x |\n" +
		"| `a.addr` | `COURIER_A_ADDR` | none (the gate's address) | x |\n" +
		"| `name` | `COURIER_NAME` | the host name | x |\n" +
		"| `b.one`, `b.two` | `COURIER_B_ONE`, `COURIER_B_TWO` | `1`, `2` | x |\n" +
		"\n| setting (flag, YAML key) | default | what |\n|---|---|---|\n" +
		"| `a.timeout` | `10s` | wrong default |\n" +
		"| `a.gone` | `1` | removed setting |\n" +
		"| `b.one` | `COURIER_B_UNO` | wrong variable in the default column is no variable |\n" +
		"\n| setting | env | default |\n|---|---|---|\n" +
		"| `b.two` | `COURIER_B_TOO` | `2` |\n"
	documented, problems := checkSettingsTables(doc, fs, "myhost")
	for _, name := range []string{"a.timeout", "a.max-bytes", "a.on", "a.addr", "name", "b.one", "b.two"} {
		if !documented[name] {
			t.Errorf("%s not seen as documented", name)
		}
	}
	if documented["c.missing"] {
		t.Error("c.missing seen as documented")
	}
	want := []string{`14: setting "a.timeout": the default column says "` + "`10s`" + `"`, `15: "a.gone" names no setting`,
		`16: setting "b.one": the default column says`, `20: COURIER_B_TOO is not the variable of b.two (COURIER_B_TWO)`}
	if len(problems) != len(want) {
		t.Fatalf("problems:\n%s", strings.Join(problems, "\n"))
	}
	for i, w := range want {
		if !strings.Contains(problems[i], w) {
			t.Errorf("problem %d: %q, want it to contain %q", i, problems[i], w)
		}
	}
}

var backticked = regexp.MustCompile("`([^`]*)`")

// checkSettingsTables returns the settings documented with a default in
// the settings tables of text, and what is wrong there (":LINE: ...").
func checkSettingsTables(text string, fs *pflag.FlagSet, host string) (map[string]bool, []string) {
	documented := map[string]bool{}
	var problems []string
	lines := strings.Split(text, "\n")
	settingCol, defaultCol, envCol := -1, -1, -1
	inTable := false
	for i, line := range lines {
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			inTable = false
			continue
		}
		cells := tableCells(line)
		if !inTable {
			// A header, if the next line is the separator.
			inTable = true
			settingCol, defaultCol, envCol = -1, -1, -1
			if i+1 < len(lines) && isSeparator(lines[i+1]) {
				for j, c := range cells {
					h := strings.ToLower(c)
					switch {
					case strings.HasPrefix(h, "setting") && settingCol < 0:
						settingCol = j
					case strings.HasPrefix(h, "default") && defaultCol < 0:
						defaultCol = j
					case strings.HasPrefix(h, "env") && envCol < 0:
						envCol = j
					}
				}
			}
			continue
		}
		if settingCol < 0 || defaultCol < 0 || isSeparator(line) {
			continue
		}
		if settingCol >= len(cells) || defaultCol >= len(cells) {
			problems = append(problems, fmt.Sprintf("%d: a row of a settings table with too few cells", i+1))
			continue
		}
		var names, envs []string
		for _, m := range backticked.FindAllStringSubmatch(cells[settingCol], -1) {
			tok := strings.Fields(strings.TrimPrefix(strings.TrimSpace(m[1]), "--"))
			switch {
			case len(tok) == 0:
			case strings.HasPrefix(tok[0], "COURIER_"):
				envs = append(envs, tok[0])
			case fs.Lookup(tok[0]) == nil:
				problems = append(problems, fmt.Sprintf("%d: %q names no setting of courier (renamed or removed? `courier --help` lists them)", i+1, tok[0]))
			default:
				names = append(names, tok[0])
			}
		}
		if envCol >= 0 && envCol < len(cells) {
			for _, m := range backticked.FindAllStringSubmatch(cells[envCol], -1) {
				envs = append(envs, strings.TrimSpace(m[1]))
			}
		}
		for _, env := range envs {
			ok := false
			for _, n := range names {
				ok = ok || node.EnvName(n) == env
			}
			if !ok && len(names) > 0 {
				want := make([]string, len(names))
				for k, n := range names {
					want[k] = node.EnvName(n)
				}
				problems = append(problems, fmt.Sprintf("%d: %s is not the variable of %s (%s)", i+1, env, strings.Join(names, ", "), strings.Join(want, ", ")))
			}
		}
		cell := cells[defaultCol]
		values := backticked.FindAllStringSubmatch(cell, -1)
		for k, n := range names {
			f := fs.Lookup(n)
			c := cell
			if len(names) > 1 && len(values) == len(names) {
				c = "`" + values[k][1] + "`"
			}
			if !defaultMatches(f.DefValue, c, host) {
				problems = append(problems, fmt.Sprintf("%d: setting %q: the default column says %q, but its default is %q (`courier --help`)", i+1, n, strings.TrimSpace(c), f.DefValue))
				continue
			}
			documented[n] = true
		}
	}
	return documented, problems
}

// isSeparator reports whether line is a table's header separator.
func isSeparator(line string) bool {
	line = strings.TrimSpace(line)
	return strings.HasPrefix(line, "|") && strings.Trim(line, "|-: ") == ""
}

// tableCells splits a Markdown table row into its trimmed cells.
func tableCells(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "|")
	line = strings.TrimSuffix(line, "|")
	var cells []string
	var cur strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '|':
			cur.WriteByte('|')
			i++
		case line[i] == '|':
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(line[i])
		}
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

// defaultMatches reports whether a default cell states def: one of its
// backticked values, or the text before its first "(" or ",", equals def
// as a string, a duration ("1m" for "1m0s", "5 s") or a number ("64 KiB"
// for 65536). An empty default is stated by no value at all (prose such
// as "none" or "the gate's address") or by `""`; the host name by
// "host name".
func defaultMatches(def, cell, host string) bool {
	if def == "[]" {
		def = ""
	}
	if host != "" && def == host {
		return strings.Contains(cell, "host name")
	}
	values := backticked.FindAllStringSubmatch(cell, -1)
	if def == "" {
		for _, v := range values {
			if v[1] != `""` {
				return false
			}
		}
		return true
	}
	candidates := []string{}
	for _, v := range values {
		candidates = append(candidates, v[1])
	}
	plain := strings.ReplaceAll(cell, "`", "")
	if k := strings.IndexAny(plain, "(,;"); k >= 0 {
		plain = plain[:k]
	}
	candidates = append(candidates, strings.TrimSpace(plain))
	for _, c := range candidates {
		if sameValue(def, strings.TrimSpace(c)) {
			return true
		}
	}
	return false
}

func sameValue(def, got string) bool {
	if got == def {
		return true
	}
	if d, err := time.ParseDuration(def); err == nil {
		g, err := time.ParseDuration(strings.ReplaceAll(got, " ", ""))
		return err == nil && g == d
	}
	if d, err := strconv.ParseFloat(def, 64); err == nil {
		g, ok := parseSize(got)
		return ok && g == d
	}
	return false
}

// parseSize reads "65536", "65,536", "64 KiB", "1 MiB".
func parseSize(s string) (float64, bool) {
	s = strings.NewReplacer(",", "", "_", "", " ", "").Replace(s)
	mult := 1.0
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	return v * mult, err == nil
}
