package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/courier-im/courier/cluster/node"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/testkit"
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

// boundSources are the files whose checks refuse a setting out of its
// range at start; boundCheckSite finds the checks in them.
var boundSources = []string{"cluster/node/config.go", "gate/config.go", "actors/config.go", "cluster/config.go",
	"cluster/membership/membership.go", "cmd/courier/main.go"}

var (
	boundCheckSite = regexp.MustCompile(`(?:Errorf\(|invalid\(|errors\.New\(|Fprintf\(stderr, )"((?:[^"\\]|\\.)*)"`)
	boundWords     = regexp.MustCompile(`must be|must hold|must fit|must leave|at least|at most|want|below|above|more than|less than`)
)

// boundExempt are checks found by boundCheckSite that need no case:
// syntax and choices, not ranges, or ranges another check enforces
// first, with the same or a stronger bound (its case stands for them).
var boundExempt = map[string]string{
	"want host:port or :port":                                "address syntax (TestCommandLineErrors)",
	"port %q is not a number in [0, 65535]":                  "address syntax (TestCommandLineErrors)",
	"must be pebble or postgres":                             "a choice",
	"cluster.provider %q: must be %q or %q":                  "a choice",
	"cluster.bind %q: must be a loopback":                    "not a range (TestCommandLineErrors)",
	"cluster.consul %q: want host:port":                      "address syntax",
	"cluster.advertise %q: want host:port":                   "address syntax",
	"Config.MaxFrameSize %d: want 1 KiB..16 MiB":             "actors.max-frame-size's check (gate.max-frame-size) comes first",
	"Config.FDReserve %d: want at least 16":                  "the node's gate.fd-reserve check asks for at least 256 first",
	"Config.HeartbeatInterval %v: want at least":             "actors.heartbeat's check (gate.heartbeat-interval) comes first",
	"Config.HeartbeatInterval %v: want > 0":                  "actors.heartbeat's check (gate.heartbeat-interval) comes first",
	"Config.ListsPollInterval %v: want at least":             "the node's gate.lists-poll-interval check comes first",
	"Config.MaxOutboundBuffered %d: want at least one frame": "actors.window-bytes's check asks for two windows and frames first",
}

// boundCase is one range check of a setting: the setting's row in
// docs/operating.md states the bound, the node refuses a value just
// outside it and accepts the value at it.
type boundCase struct {
	check   string     // a fragment of the check's error format string in boundSources
	setting string     // the setting the error names, whose row states the bound
	doc     []string   // what a settings-table row of the setting says (backticks, case and spacing aside)
	out     [][]string // settings just outside the bound: refused, exit status 2, the error naming setting
	in      [][]string // settings at the bound: accepted
}

func boundCases() []boundCase {
	pg := func(args ...string) []string {
		return append([]string{"--store", "postgres", "--store.dsn", "host=127.0.0.1 port=1"}, args...)
	}
	a := func(args ...string) []string { return args }
	var rl syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	nofile := int(min(rl.Max, 1<<30))
	big := []string{"--gate.out-queue-bytes", "40000000", "--gate.max-outbound-buffered", "40000000", "--gate.byte-burst", "20000000"}
	return []boundCase{
		// cluster/node/config.go
		{"idle-memory-release %v: must be 0", "idle-memory-release", []string{"`0`: never, else at least `10ms`"},
			[][]string{a("--idle-memory-release=-1ms"), a("--idle-memory-release=9ms")}, [][]string{a("--idle-memory-release=10ms"), a("--idle-memory-release=0")}},
		{"shutdown-grace %v: must be at least 1s", "shutdown-grace", []string{"at least `1s`"},
			[][]string{a("--shutdown-grace=999ms", "--drain-window=0")}, [][]string{a("--shutdown-grace=1s", "--drain-window=0")}},
		{"drain-window %v: must be in [0, %v] and leave shutdown-grace", "drain-window",
			[]string{"`0` to `10m`, and at most `shutdown-grace` less a quarter of it (at most 5 s less"},
			[][]string{a("--drain-window=-1s"), a("--drain-window=26s"), a("--drain-window=10m1s", "--shutdown-grace=1h")},
			[][]string{a("--drain-window=0"), a("--drain-window=25s"), a("--drain-window=10m", "--shutdown-grace=1h")}},
		{"commit queue slots: at most %d", "store.lanes", []string{"(`actors.max-pending-writes` + 256) must stay within 2,097,152"},
			[][]string{a("--store.lanes=2", "--actors.max-pending-writes=1048321")}, [][]string{a("--store.lanes=2", "--actors.max-pending-writes=1048320")}},
		{"gate.fd-reserve %d: less than the rest", "gate.fd-reserve",
			[]string{"256 (consul, the members, logs) + `api.max-connections` + 16 (api role) + 128 http connections (`http-addr` set) + `store.max-conns` (postgresql) or 512 pebble files (the actors or the gate role"},
			[][]string{a("--gate.fd-reserve=1935")}, [][]string{a("--gate.fd-reserve=1936")}},
		{"gate.lists-poll-interval %v: at least 10ms", "gate.lists-poll-interval", []string{"at least `10ms`"},
			[][]string{a("--gate.lists-file=/nonexistent/lists.json", "--gate.lists-poll-interval=9ms")},
			[][]string{a("--gate.lists-file=/nonexistent/lists.json", "--gate.lists-poll-interval=10ms")}},
		{"app-secret %q: the appcode must be in [1, 65535]", "app-secret", []string{"the appcode 1 to 65535"},
			[][]string{a("--app-secret=0=0123456789abcdef"), a("--app-secret=65536=0123456789abcdef")}, [][]string{a("--app-secret=65535=0123456789abcdef")}},
		{"app-secret for app %s: at least 16 bytes", "app-secret", []string{"at least 16 bytes"},
			[][]string{a("--app-secret=2=0123456789abcde")}, [][]string{a("--app-secret=2=0123456789abcdef")}},
		{"api-key %q...: at least 16 bytes", "api-key", []string{"(at least 16 bytes)"},
			[][]string{a("--api-key=0123456789abcde=1")}, [][]string{a("--api-key=0123456789abcdef=1")}},
		{"api-key %s...: appcode %q must be in [1, 65535]", "api-key", []string{"the appcode it acts for (1 to 65535), `*` for an operator key"},
			[][]string{a("--api-key=0123456789abcdef=0"), a("--api-key=0123456789abcdef=65536")}, [][]string{a("--api-key=0123456789abcdef=65535"), a("--api-key=0123456789abcdef=*")}},
		{"actors.window-bytes %d: two windows and a frame each", "actors.window-bytes",
			[]string{"two windows with a frame each, 2 × (this + `gate.max-frame-size` + 4096), must fit `gate.out-queue-bytes` and `gate.max-outbound-buffered`"},
			[][]string{a("--actors.window-bytes=454657")}, [][]string{a("--actors.window-bytes=454656")}},
		{"actors.window %d: two windows and their LOGIN_ACK", "actors.window", []string{"2 × (`actors.window` + 1) frames, must fit `gate.out-queue-frames`"},
			[][]string{a("--actors.window=512")}, [][]string{a("--actors.window=511")}},
		{"api.default-ttl %v: must be at least 1s", "api.default-ttl", []string{"at least `1s`"},
			[][]string{a("--api.default-ttl=999ms")}, [][]string{a("--api.default-ttl=1s")}},
		{"api.default-ttl %v: more than api.max-ttl", "api.default-ttl", []string{"at most `api.max-ttl`"},
			[][]string{a("--api.default-ttl=721h")}, [][]string{a("--api.default-ttl=720h")}},
		{"api.max-payload %d: must be positive and leave 1 KiB", "api.max-payload", []string{"at least 1", "at most `gate.max-frame-size` - 1024"},
			[][]string{a("--api.max-payload=0"), a("--api.max-payload=64513")}, [][]string{a("--api.max-payload=1"), a("--api.max-payload=64512")}},
		{"upstream.queue-len %d: must be at least 1", "upstream.queue-len", []string{"at least 1"},
			[][]string{a("--upstream.queue-len=0")}, [][]string{a("--upstream.queue-len=1")}},
		{"upstream.max-age %v: must be at least 1s", "upstream.max-age", []string{"at least `1s`"},
			[][]string{a("--upstream.max-age=999ms")}, [][]string{a("--upstream.max-age=1s")}},
		{"upstream.resend-after %v: must be at least 1s", "upstream.resend-after", []string{"at least `1s`; `0`: never"},
			[][]string{a("--upstream.resend-after=999ms")}, [][]string{a("--upstream.resend-after=1s"), a("--upstream.resend-after=0")}},
		{"upstream.default-in-flight %d: must be in [1, upstream.max-in-flight", "upstream.default-in-flight",
			[]string{"`upstream.default-in-flight` is at least 1 and at most `upstream.max-in-flight`"},
			[][]string{a("--upstream.default-in-flight=0"), a("--upstream.max-in-flight=1023")}, [][]string{a("--upstream.default-in-flight=1"), a("--upstream.max-in-flight=1024")}},
		{"upstream.max-batch %d: must be at least 1", "upstream.max-batch", []string{"each at least 1"},
			[][]string{a("--upstream.max-batch=0")}, [][]string{a("--upstream.max-batch=1")}},
		{"upstream.max-batch-bytes %d: must be at least 1", "upstream.max-batch-bytes", []string{"each at least 1"},
			[][]string{a("--upstream.max-batch-bytes=0")}, [][]string{a("--upstream.max-batch-bytes=1")}},
		{"upstream.app-max-bytes %d: must hold one message", "upstream.app-max-bytes", []string{"at least one frame (`gate.max-frame-size` + 1,280)"},
			[][]string{a("--upstream.app-max-bytes=66815")}, [][]string{a("--upstream.app-max-bytes=66816")}},
		{"upstream.uid-max-bytes %d: must not be negative", "upstream.uid-max-bytes", []string{"not negative"},
			[][]string{a("--upstream.uid-max-bytes=-1")}, [][]string{a("--upstream.uid-max-bytes=0")}},
		{"upstream.max-bytes %d: must be at least upstream.app-max-bytes", "upstream.max-bytes", []string{"at least `upstream.app-max-bytes`"},
			[][]string{a("--upstream.max-bytes=67108863")}, [][]string{a("--upstream.max-bytes=67108864")}},
		{"store.max-conns %d: at least 2", "store.max-conns", []string{"at least 2"},
			[][]string{pg("--store.max-conns=1")}, [][]string{pg("--store.max-conns=2", "--store.lanes=1", "--store.readers=1")}},
		{"store.lanes %d: must be below store.max-conns", "store.lanes", []string{"with postgresql below `store.max-conns`"},
			[][]string{pg("--store.max-conns=4", "--store.lanes=4")}, [][]string{pg("--store.max-conns=8", "--store.lanes=4")}},
		{"store.readers %d: with store.lanes %d must fit", "store.readers", []string{"`store.lanes` + `store.readers` must fit in `store.max-conns`"},
			[][]string{pg("--store.max-conns=8", "--store.readers=5")}, [][]string{pg("--store.max-conns=8", "--store.readers=4")}},
		{"store.readers %d: must be in [1, 64]", "store.readers", []string{"1 to 64"},
			[][]string{a("--store.readers=0"), a("--store.readers=65")}, [][]string{a("--store.readers=1"), a("--store.readers=64")}},
		{"store.read-queue %d: must be in [1, 1048576]", "store.read-queue", []string{"`1` to `1048576`"},
			[][]string{a("--store.read-queue=0"), a("--store.read-queue=1048577")}, [][]string{a("--store.read-queue=1"), a("--store.read-queue=1048576")}},
		{"store.lanes %d: must be in [0, 64]", "store.lanes", []string{"`0` to `64`"},
			[][]string{a("--store.lanes=-1"), a("--store.lanes=65")}, [][]string{a("--store.lanes=0"), a("--store.lanes=64")}},
		{"store.min-sync-interval %v: must be in [0, 10ms]", "store.min-sync-interval", []string{"`0` to `10ms`"},
			[][]string{a("--store.min-sync-interval=-1ms"), a("--store.min-sync-interval=11ms")}, [][]string{a("--store.min-sync-interval=0"), a("--store.min-sync-interval=10ms")}},
		{"store.timeout %v: at least 100ms", "store.timeout", []string{"at least `100ms`"},
			[][]string{a("--store.timeout=99ms")}, [][]string{a("--store.timeout=100ms")}},
		{"store.stall-after %v: 0 (never) or at least 1s", "store.stall-after", []string{"`0` never; else at least `1s`"},
			[][]string{a("--store.stall-after=999ms")}, [][]string{a("--store.stall-after=0"), a("--store.stall-after=1s")}},
		{"api.max-batch %d: must be at least 1", "api.max-batch", []string{"at least 1"},
			[][]string{a("--api.max-batch=0")}, [][]string{a("--api.max-batch=1")}},
		{"api.max-idempotency-key %d: must be in [1, 1024]", "api.max-idempotency-key", []string{"1 to 1024"},
			[][]string{a("--api.max-idempotency-key=0"), a("--api.max-idempotency-key=1025")}, [][]string{a("--api.max-idempotency-key=1"), a("--api.max-idempotency-key=1024")}},
		{"api.max-request-bytes %d: must hold one push", "api.max-request-bytes", []string{"at least `api.max-payload` + 4096, at most 1 GiB"},
			[][]string{a("--api.max-request-bytes=65535"), a("--api.max-request-bytes=1073741825", "--api.max-unread-answer-bytes=0")},
			[][]string{a("--api.max-request-bytes=65536"), a("--api.max-request-bytes=1073741824", "--api.max-unread-answer-bytes=0")}},
		{"api.max-concurrent-streams %d: must be at least 1", "api.max-concurrent-streams", []string{"at least 1"},
			[][]string{a("--api.max-concurrent-streams=0")}, [][]string{a("--api.max-concurrent-streams=1")}},
		{"api.keepalive-min-time %v: must be at least 1s", "api.keepalive-min-time", []string{"at least `1s`"},
			[][]string{a("--api.keepalive-min-time=999ms")}, [][]string{a("--api.keepalive-min-time=1s")}},
		{"api.keepalive-time %v: must be at least 1s", "api.keepalive-time", []string{"each at least `1s`"},
			[][]string{a("--api.keepalive-time=999ms")}, [][]string{a("--api.keepalive-time=1s")}},
		{"api.keepalive-timeout %v: must be at least 1s", "api.keepalive-timeout", []string{"each at least `1s`"},
			[][]string{a("--api.keepalive-timeout=999ms")}, [][]string{a("--api.keepalive-timeout=1s")}},
		{"api.max-connection-idle %v: must be at least 1s", "api.max-connection-idle", []string{"at least `1s`"},
			[][]string{a("--api.max-connection-idle=999ms")}, [][]string{a("--api.max-connection-idle=1s")}},
		{"api.max-pushes-in-flight %d: must hold one PushMany", "api.max-pushes-in-flight", []string{"at least `api.max-batch`"},
			[][]string{a("--api.max-pushes-in-flight=999")}, [][]string{a("--api.max-pushes-in-flight=1000")}},
		{"api.max-gate-backlog %v: must not be negative", "api.max-gate-backlog", []string{"not negative"},
			[][]string{a("--api.max-gate-backlog=-1ms")}, [][]string{a("--api.max-gate-backlog=0")}},
		{"api.max-push-delay %v: must not be negative", "api.max-push-delay", []string{"not negative"},
			[][]string{a("--api.max-push-delay=-1ms")}, [][]string{a("--api.max-push-delay=0")}},
		{"api.max-connections %d: must be at least 1", "api.max-connections", []string{"at least 1"},
			[][]string{a("--api.max-connections=0")}, [][]string{a("--api.max-connections=1")}},
		{"api.max-unauthenticated-calls %d: must be at least 1", "api.max-unauthenticated-calls", []string{"at least 1"},
			[][]string{a("--api.max-unauthenticated-calls=0")}, [][]string{a("--api.max-unauthenticated-calls=1")}},
		{"api.max-calls-in-flight %d: must be at least 1", "api.max-calls-in-flight", []string{"at least 1"},
			[][]string{a("--api.max-calls-in-flight=0")}, [][]string{a("--api.max-calls-in-flight=1")}},
		{"api.max-upstream-streams %d: must be at least 1", "api.max-upstream-streams", []string{"at least 1"},
			[][]string{a("--api.max-upstream-streams=0")}, [][]string{a("--api.max-upstream-streams=1")}},
		{"api.max-app-calls-in-flight %d: must be in [1, api.max-calls-in-flight", "api.max-app-calls-in-flight", []string{"at most `api.max-calls-in-flight`"},
			[][]string{a("--api.max-app-calls-in-flight=-1"), a("--api.max-app-calls-in-flight=257")}, [][]string{a("--api.max-app-calls-in-flight=256")}},
		{"api.max-app-upstream-streams %d: must be in [1, api.max-upstream-streams", "api.max-app-upstream-streams", []string{"at most `api.max-upstream-streams`"},
			[][]string{a("--api.max-app-upstream-streams=-1"), a("--api.max-app-upstream-streams=129")}, [][]string{a("--api.max-app-upstream-streams=128")}},
		{"api.max-unread-answer-bytes %d: must be at least api.max-request-bytes", "api.max-unread-answer-bytes", []string{"`0`: no bound, else at least `api.max-request-bytes`"},
			[][]string{a("--api.max-unread-answer-bytes=4194303")}, [][]string{a("--api.max-unread-answer-bytes=4194304"), a("--api.max-unread-answer-bytes=0")}},
		{"api.max-app-pushes-in-flight %d: must hold one PushMany", "api.max-app-pushes-in-flight", []string{"at least `api.max-batch`, at most `api.max-pushes-in-flight`"},
			[][]string{a("--api.max-app-pushes-in-flight=999"), a("--api.max-app-pushes-in-flight=4097")}, [][]string{a("--api.max-app-pushes-in-flight=1000"), a("--api.max-app-pushes-in-flight=4096")}},
		// gate/config.go (named as the node's settings)
		{"Config.Loops %d: want 0..1024", "gate.loops", []string{"`0` to `1024`"},
			[][]string{a("--gate.loops=-1"), a("--gate.loops=1025")}, [][]string{a("--gate.loops=1024")}},
		{"Config.MaxConns %d: want >= 0", "gate.max-conns", []string{"not negative"},
			[][]string{a("--gate.max-conns=-1")}, [][]string{a("--gate.max-conns=0")}},
		{"Config.MaxConns %d: above the open-files limit", "gate.max-conns", []string{"it may not exceed the open-files limit minus `gate.fd-reserve`"},
			[][]string{a("--gate.max-conns=" + strconv.Itoa(nofile-2048+1))}, nil},
		{"Config.FDReserve: %v", "gate.fd-reserve", []string{"it must be less than the open-files limit"},
			[][]string{a("--gate.fd-reserve=" + strconv.Itoa(nofile))}, nil},
		{"Config.TickInterval %v: want at least 1ms", "gate.tick-interval", []string{"at least `1ms`"},
			[][]string{a("--gate.tick-interval=999us")}, [][]string{a("--gate.tick-interval=1ms")}},
		{"Config.LoginTimeout %v: want at least Config.TickInterval", "gate.login-timeout", []string{"at least `gate.tick-interval`"},
			[][]string{a("--gate.tick-interval=2s", "--gate.login-timeout=1s")}, [][]string{a("--gate.tick-interval=2s", "--gate.login-timeout=2s")}},
		{"Config.IdleTimeout %v: want 0 or at least Config.TickInterval", "gate.idle-timeout", []string{"`0`, or at least twice", "and at least `gate.tick-interval`"},
			[][]string{a("--gate.idle-timeout=-1s"), a("--gate.heartbeat-interval=1s", "--gate.tick-interval=6s", "--gate.idle-timeout=5s")},
			[][]string{a("--gate.heartbeat-interval=1s", "--gate.tick-interval=5s", "--gate.idle-timeout=5s")}},
		{"Config.IdleTimeout %v: want 0 (3 heartbeats) or at least twice", "gate.idle-timeout", []string{"at least twice `gate.heartbeat-interval`"},
			[][]string{a("--gate.idle-timeout=59s")}, [][]string{a("--gate.idle-timeout=60s"), a("--gate.idle-timeout=0")}},
		{"Config.CompressThreshold %d: want >= 0", "gate.compress-threshold", []string{"not negative"},
			[][]string{a("--gate.compress-threshold=-1")}, [][]string{a("--gate.compress-threshold=0")}},
		{"Config.OutQueueFrames %d: want 1..1Mi", "gate.out-queue-frames", []string{"at most `1048576`, and at least two windows and their login_ack, 2 × (`actors.window` + 1)"},
			[][]string{a("--gate.out-queue-frames=1048577")}, [][]string{a("--gate.out-queue-frames=1048576")}},
		{"Config.OutQueueBytes %d: want one frame", "gate.out-queue-bytes", []string{"at most 1 gib, and at least two windows and a frame each, 2 × (`actors.window-bytes` + `gate.max-frame-size` + 4096)"},
			[][]string{a("--gate.out-queue-bytes=1073741825")}, [][]string{a("--gate.out-queue-bytes=1073741824")}},
		{"Config.FramesPerSecond %d: want >= 0", "gate.frames-per-second", []string{"not negative"},
			[][]string{a("--gate.frames-per-second=-1")}, [][]string{a("--gate.frames-per-second=0")}},
		{"Config.FrameBurst %d: want >= 1", "gate.frame-burst", []string{"the burst at least 1 while the rate is not `0`"},
			[][]string{a("--gate.frame-burst=0")}, [][]string{a("--gate.frame-burst=1"), a("--gate.frames-per-second=0", "--gate.frame-burst=0")}},
		{"Config.C2CPerSecond %d: want >= 0", "gate.c2c-per-second", []string{"not negative"},
			[][]string{a("--gate.c2c-per-second=-1")}, [][]string{a("--gate.c2c-per-second=0")}},
		{"Config.C2CBurst %d: want >= 1", "gate.c2c-burst", []string{"the burst at least 1 while the rate is not `0`"},
			[][]string{a("--gate.c2c-burst=0")}, [][]string{a("--gate.c2c-burst=1"), a("--gate.c2c-per-second=0", "--gate.c2c-burst=0")}},
		{"Config.BytesPerSecond %d: want >= 0", "gate.bytes-per-second", []string{"not negative"},
			[][]string{a("--gate.bytes-per-second=-1")}, [][]string{a("--gate.bytes-per-second=0")}},
		{"Config.ByteBurst %d: want at least one frame", "gate.byte-burst", []string{"must hold a frame (`gate.max-frame-size` + 18 bytes of header)"},
			[][]string{a("--gate.byte-burst=65553")}, [][]string{a("--gate.byte-burst=65554")}},
		{"Config.NewConnsPerIP %v: want >= 0", "gate.new-conns-per-ip", []string{"not negative"},
			[][]string{a("--gate.new-conns-per-ip=-1")}, [][]string{a("--gate.new-conns-per-ip=0")}},
		{"Config.NewConnsPerIPBurst %d: want >= 1", "gate.new-conns-per-ip-burst", []string{"the burst at least 1 while the rate is not `0`"},
			[][]string{a("--gate.new-conns-per-ip-burst=0")}, [][]string{a("--gate.new-conns-per-ip-burst=1")}},
		{"Config.IPLimiterSize %d: want >= 1", "gate.ip-limiter-size", []string{"at least 1 while `gate.new-conns-per-ip` is not `0`"},
			[][]string{a("--gate.ip-limiter-size=0")}, [][]string{a("--gate.ip-limiter-size=1")}},
		{"Config.MaxTokenLifetime %v: want >= 0", "gate.max-token-lifetime", []string{"not negative"},
			[][]string{a("--gate.max-token-lifetime=-1s")}, [][]string{a("--gate.max-token-lifetime=0")}},
		// actors/config.go (actors.heartbeat and actors.max-frame-size
		// are the gate's settings, renamed in the error)
		{"actors.heartbeat %v: must be at least 1s", "gate.heartbeat-interval", []string{"at least `1s`"},
			[][]string{a("--gate.heartbeat-interval=999ms", "--gate.idle-timeout=2s")}, [][]string{a("--gate.heartbeat-interval=1s")}},
		{"actors.retry-initial %v: must be positive", "actors.retry-initial", []string{"the first positive"},
			[][]string{a("--actors.retry-initial=0")}, [][]string{a("--actors.retry-initial=1ns")}},
		{"actors.retry-max %v: must be at least retry-initial", "actors.retry-max", []string{"the second at least the first"},
			[][]string{a("--actors.retry-max=1999ms")}, [][]string{a("--actors.retry-max=2s")}},
		{"actors.window %d: must be in [1, 4096]", "actors.window", []string{"`1` to `4096`"},
			[][]string{a("--actors.window=0"), a("--actors.window=4097")}, [][]string{a("--actors.window=1"), a("--actors.window=4096", "--gate.out-queue-frames=8194")}},
		{"actors.window-bytes %d: must be at least 1024", "actors.window-bytes", []string{"at least `1024`"},
			[][]string{a("--actors.window-bytes=1023")}, [][]string{a("--actors.window-bytes=1024")}},
		{"actors.c2c-ttl %v: must be positive", "actors.c2c-ttl", []string{"positive"},
			[][]string{a("--actors.c2c-ttl=0")}, [][]string{a("--actors.c2c-ttl=1ns")}},
		{"actors.inbox-max-messages %d: must be at least 1", "actors.inbox-max-messages", []string{"at least `1` message and `1024` bytes"},
			[][]string{a("--actors.inbox-max-messages=0")}, [][]string{a("--actors.inbox-max-messages=1")}},
		{"actors.inbox-max-bytes %d: must be at least 1024", "actors.inbox-max-bytes", []string{"at least `1` message and `1024` bytes"},
			[][]string{a("--actors.inbox-max-bytes=1023")}, [][]string{a("--actors.inbox-max-bytes=1024")}},
		{"actors.c2c-max-messages %d: must be at least 1", "actors.c2c-max-messages", []string{"at least `1` message and `1024` bytes"},
			[][]string{a("--actors.c2c-max-messages=0")}, [][]string{a("--actors.c2c-max-messages=1", "--actors.c2c-sender-max-messages=1")}},
		{"actors.c2c-max-bytes %d: must be at least 1024", "actors.c2c-max-bytes", []string{"at least `1` message and `1024` bytes"},
			[][]string{a("--actors.c2c-max-bytes=1023")}, [][]string{a("--actors.c2c-max-bytes=1024", "--actors.c2c-sender-max-bytes=1024")}},
		{"actors.c2c-sender-max-messages %d: must be in [1, actors.c2c-max-messages", "actors.c2c-sender-max-messages",
			[]string{"at least `1` message and `1024` bytes, at most the room itself (`actors.c2c-max-messages`"},
			[][]string{a("--actors.c2c-sender-max-messages=0"), a("--actors.c2c-sender-max-messages=1001")}, [][]string{a("--actors.c2c-sender-max-messages=1"), a("--actors.c2c-sender-max-messages=1000")}},
		{"actors.c2c-sender-max-bytes %d: must be in [1024, actors.c2c-max-bytes", "actors.c2c-sender-max-bytes",
			[]string{"at least `1` message and `1024` bytes, at most the room itself (`actors.c2c-max-messages`, `actors.c2c-max-bytes`)"},
			[][]string{a("--actors.c2c-sender-max-bytes=1023"), a("--actors.c2c-sender-max-bytes=4194305")}, [][]string{a("--actors.c2c-sender-max-bytes=1024"), a("--actors.c2c-sender-max-bytes=4194304")}},
		{"actors.idempotency-ttl %v: must be at least 1m", "actors.idempotency-ttl", []string{"at least 1 minute"},
			[][]string{a("--actors.idempotency-ttl=59s")}, [][]string{a("--actors.idempotency-ttl=1m")}},
		{"actors.pull-page %d: must be in [1, 1000]", "actors.pull-page", []string{"1 to 1000"},
			[][]string{a("--actors.pull-page=0"), a("--actors.pull-page=1001")}, [][]string{a("--actors.pull-page=1"), a("--actors.pull-page=1000")}},
		{"actors.max-frame-size %d: must be in [1 KiB, 16 MiB]", "gate.max-frame-size", []string{"1 kib to 16 mib"},
			[][]string{a("--gate.max-frame-size=1023"), a("--gate.max-frame-size=16777217")},
			[][]string{append(a("--gate.max-frame-size=16777216"), big...)}},
		{"actors.expiry-sweep %v: must be 0 (off) or at least 100ms", "actors.expiry-sweep", []string{"`0`: only when the identity comes back, else at least `100ms`"},
			[][]string{a("--actors.expiry-sweep=99ms")}, [][]string{a("--actors.expiry-sweep=0"), a("--actors.expiry-sweep=100ms")}},
		{"actors.passivate-after %v: must be at least 100ms", "actors.passivate-after", []string{"at least `100ms`"},
			[][]string{a("--actors.passivate-after=99ms")}, [][]string{a("--actors.passivate-after=100ms")}},
		{"actors.max-pending-writes %d: must be in [1, 1048576]", "actors.max-pending-writes", []string{"`1` to `1048576`"},
			[][]string{a("--actors.max-pending-writes=0"), a("--actors.max-pending-writes=1048577")}, [][]string{a("--actors.max-pending-writes=1"), a("--actors.max-pending-writes=1048576")}},
		{"actors.store-timeout %v: must be at least 10ms", "actors.store-timeout", []string{"at least `10ms`"},
			[][]string{a("--actors.store-timeout=9ms")}, [][]string{a("--actors.store-timeout=10ms")}},
		{"actors.max-stashed %d: must be in [1, 65536]", "actors.max-stashed", []string{"`1` to `65536`"},
			[][]string{a("--actors.max-stashed=0"), a("--actors.max-stashed=65537")}, [][]string{a("--actors.max-stashed=1"), a("--actors.max-stashed=65536")}},
		{"actors.logins-per-second %v: must be 0 (no bound) or in [0.001, 1000000]", "actors.logins-per-second", []string{"`0` or `0.001` to `1000000`"},
			[][]string{a("--actors.logins-per-second=-1"), a("--actors.logins-per-second=0.0009"), a("--actors.logins-per-second=1000001")},
			[][]string{a("--actors.logins-per-second=0"), a("--actors.logins-per-second=0.001"), a("--actors.logins-per-second=1000000")}},
		{"actors.login-burst %d: must be in [1, 1000000]", "actors.login-burst", []string{"the burst `1` to `1000000` while the rate is not `0`"},
			[][]string{a("--actors.login-burst=0"), a("--actors.login-burst=1000001")}, [][]string{a("--actors.login-burst=1"), a("--actors.login-burst=1000000"), a("--actors.logins-per-second=0", "--actors.login-burst=0")}},
		// cluster/config.go, cluster/membership/membership.go
		{"cluster.shards %d: must be in [1, %d]", "cluster.shards", []string{"1 to 256"},
			[][]string{a("--cluster.shards=0"), a("--cluster.shards=257")}, [][]string{a("--cluster.shards=1"), a("--cluster.shards=256")}},
		{"cluster.request-timeout %v: must be positive", "cluster.request-timeout", []string{"positive"},
			[][]string{a("--cluster.request-timeout=0")}, [][]string{a("--cluster.request-timeout=1ns")}},
		{"cluster.max-hops %d: must be at least 1", "cluster.max-hops", []string{"at least 1"},
			[][]string{a("--cluster.max-hops=0")}, [][]string{a("--cluster.max-hops=1")}},
		{"cluster.ttl %v: must be at least 1s", "cluster.ttl", []string{"at least `1s`"},
			[][]string{a("--cluster.ttl=999ms")}, [][]string{a("--cluster.ttl=1s")}},
		{"cluster.deregister-after %v: must be at least 1m", "cluster.deregister-after", []string{"at least `1m`"},
			[][]string{a("--cluster.deregister-after=59s")}, [][]string{a("--cluster.deregister-after=1m")}},
		{"cluster.load-interval %v: must be at least 100ms", "cluster.load-interval", []string{"at least `100ms`"},
			[][]string{a("--cluster.load-interval=99ms")}, [][]string{a("--cluster.load-interval=100ms")}},
		{"cluster.join-timeout %v: must be positive", "cluster.join-timeout", []string{"positive"},
			[][]string{a("--cluster.join-timeout=0")}, [][]string{a("--cluster.join-timeout=1ns")}},
		// cmd/courier/main.go
		{"--gc-min-heap %d: must be 0 (none) or a number of bytes", "gc-min-heap", []string{"not negative"},
			[][]string{a("--gc-min-heap=-1")}, [][]string{a("--gc-min-heap=0")}},
		{"--gc-percent %d: must be in [10, 10000]", "gc-percent", []string{"10 to 10000"},
			[][]string{a("--gc-percent=9"), a("--gc-percent=10001")}, [][]string{a("--gc-percent=10"), a("--gc-percent=10000")}},
	}
}

// TestSettingsBoundsDocumentedAndEnforced: every check that refuses a
// setting out of its range at start (found in boundSources) has a case;
// each case's bound is stated in a settings-table row of the setting in
// docs/operating.md; the node refuses a value just outside it with exit
// status 2 and an error naming the setting, and accepts the value at
// it. A new check without a case, a bound changed in the code or in the
// docs alone, fails here.
func TestSettingsBoundsDocumentedAndEnforced(t *testing.T) {
	cases := boundCases()
	var sites []string
	for _, f := range boundSources {
		b, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range boundCheckSite.FindAllStringSubmatch(string(b), -1) {
			if boundWords.MatchString(m[1]) {
				sites = append(sites, f+": "+m[1])
			}
		}
	}
	if len(sites) < 50 {
		t.Fatalf("found only %d range checks in %v: has the code moved? (boundSources, boundCheckSite)", len(sites), boundSources)
	}
	covered := func(site string, frags []string) bool {
		for _, f := range frags {
			if strings.Contains(site, f) {
				return true
			}
		}
		return false
	}
	var checks, exempt []string
	for _, c := range cases {
		checks = append(checks, c.check)
	}
	for f := range boundExempt {
		exempt = append(exempt, f)
	}
	for _, s := range sites {
		if !covered(s, checks) && !covered(s, exempt) {
			t.Errorf("range check %q has no case in boundCases: state its bound in the setting's row of docs/operating.md and add a case with values just outside and at it", s)
		}
	}
	all := strings.Join(sites, "\n") + "\n"
	for _, f := range boundSources {
		b, _ := os.ReadFile(filepath.Join(repoRoot, f))
		all += string(b)
	}
	for _, frag := range append(checks, exempt...) {
		if !strings.Contains(all, frag) {
			t.Errorf("%q is in no check of %v any more: update boundCases or boundExempt", frag, boundSources)
		}
	}

	text, err := os.ReadFile(filepath.Join(repoRoot, "docs/operating.md"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.DefaultConfig()
	rows := settingRows(string(text), newFlagSet(&cfg, &cmdFlags{}))
	for _, c := range cases {
		if len(rows[c.setting]) == 0 {
			t.Errorf("%s: no row of a settings table of docs/operating.md names it", c.setting)
			continue
		}
		for _, d := range c.doc {
			found := false
			for _, r := range rows[c.setting] {
				found = found || strings.Contains(normalizeDoc(r), normalizeDoc(d))
			}
			if !found {
				t.Errorf("docs/operating.md: no settings-table row of %s says %q (the bound of the check %q)", c.setting, d, c.check)
			}
		}
	}

	notDir := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		for i, out := range c.out {
			t.Run(fmt.Sprintf("%s/out%d", c.setting, i), func(t *testing.T) {
				t.Parallel()
				args := append(append(loopback(t), "--app-secret", "1=0123456789abcdef"), out...)
				code, _, errw := courier(t, nil, args...)
				if code != 2 || !strings.Contains(errw, c.setting) {
					t.Errorf("%v (the check %q): exit %d, want 2 and an error naming %s:\n%s", out, c.check, code, c.setting, lastLines(errw, 5))
				}
			})
		}
		for i, in := range c.in {
			t.Run(fmt.Sprintf("%s/in%d", c.setting, i), func(t *testing.T) {
				t.Parallel()
				// The settings pass; the node then fails on its data
				// directory (a file), or on the PostgreSQL of the case
				// (nothing listens on port 1): exit status 1.
				args := append(append(append(loopback(t), "--app-secret", "1=0123456789abcdef"), in...), "--data-dir", notDir)
				code, _, errw := courier(t, nil, args...)
				if code != 1 {
					t.Errorf("%v (at the bound of the check %q): exit %d, want 1 (the settings accepted, the data directory refused):\n%s", in, c.check, code, lastLines(errw, 5))
				}
				if !strings.HasPrefix(c.check, "Config.") {
					return
				}
				// The gate checks its settings after the store is open:
				// the gate itself says whether it takes them.
				cfg := node.DefaultConfig()
				if err := newFlagSet(&cfg, &cmdFlags{}).Parse(in); err != nil {
					t.Fatal(err)
				}
				g := cfg.Gate
				g.AppSecrets, g.ListsFile = map[uint16][]byte{1: []byte("0123456789abcdef")}, ""
				if _, err := gate.New(g, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "nil Handler") {
					t.Errorf("%v: the gate refuses it: %v", in, err)
				}
			})
		}
	}
}

// settingRows returns, for each setting, the rows of the settings tables
// of text (as checkSettingsTables finds them) that name it.
func settingRows(text string, fs *pflag.FlagSet) map[string][]string {
	rows := map[string][]string{}
	lines := strings.Split(text, "\n")
	settingCol, inTable := -1, false
	for i, line := range lines {
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			inTable = false
			continue
		}
		cells := tableCells(line)
		if !inTable {
			inTable, settingCol = true, -1
			if i+1 < len(lines) && isSeparator(lines[i+1]) {
				for j, c := range cells {
					if strings.HasPrefix(strings.ToLower(c), "setting") && settingCol < 0 {
						settingCol = j
					}
				}
			}
			continue
		}
		if settingCol < 0 || settingCol >= len(cells) || isSeparator(line) {
			continue
		}
		for _, m := range backticked.FindAllStringSubmatch(cells[settingCol], -1) {
			if tok := strings.Fields(strings.TrimPrefix(strings.TrimSpace(m[1]), "--")); len(tok) > 0 && fs.Lookup(tok[0]) != nil {
				rows[tok[0]] = append(rows[tok[0]], line)
			}
		}
	}
	return rows
}

// normalizeDoc drops Markdown's backticks, case and runs of spaces.
func normalizeDoc(s string) string {
	return strings.Join(strings.Fields(strings.ToLower(strings.ReplaceAll(s, "`", ""))), " ")
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// metricSourceDirs hold the code that registers the node's metrics.
var metricSourceDirs = []string{"actors", "cluster", "gate", "cmd/courier", "messages"}

var (
	metricName    = regexp.MustCompile(`(?:Name:\s*|NewDesc\(\s*)"(courier_[a-z0-9_]+)"`)
	metricNsSub   = regexp.MustCompile(`(?m)^\s*const ns, sub = "([a-z]+)", "([a-z]+)"`)
	metricSubName = regexp.MustCompile(`(?:Name:\s*|\b(?:counter|vec)\()"([a-z][a-z0-9_]*)"`)
	metricScraped = regexp.MustCompile(`(?m)^# TYPE (courier_[a-z0-9_]+) `)
	metricInDocs  = regexp.MustCompile("`(courier_[a-z0-9_]+)`")
)

// registeredMetrics returns the courier_* metrics the code registers
// (file by name), from their names in the source: Name: "courier_x",
// prometheus.NewDesc("courier_x", and, in a file that builds names from
// a namespace and subsystem (const ns, sub = "courier", "gate"), the
// names given to Name: and its counter( and vec( helpers.
func registeredMetrics(t *testing.T) map[string]string {
	t.Helper()
	found := map[string]string{}
	for _, dir := range metricSourceDirs {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			src, rel := string(b), strings.TrimPrefix(path, repoRoot+"/")
			for _, m := range metricName.FindAllStringSubmatch(src, -1) {
				found[m[1]] = rel
			}
			if strings.Contains(src, "Subsystem:") || strings.Contains(src, "Namespace:") || strings.Contains(src, "BuildFQName") {
				ns := metricNsSub.FindStringSubmatch(src)
				if ns == nil {
					t.Errorf("%s builds metric names in a way registeredMetrics does not read (want const ns, sub = \"courier\", \"...\"): teach it", rel)
					return nil
				}
				for _, m := range metricSubName.FindAllStringSubmatch(src, -1) {
					if !strings.HasPrefix(m[1], "courier_") {
						found[ns[1]+"_"+ns[2]+"_"+m[1]] = rel
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return found
}

// TestMetricsAreDocumented: every courier_* metric the code registers is
// named in the Metrics section of docs/operating.md, and every one named
// there exists. The source scan is checked against a running node's
// /metrics: a metric it serves that the scan missed fails too.
func TestMetricsAreDocumented(t *testing.T) {
	code := registeredMetrics(t)
	if len(code) < 60 {
		t.Fatalf("found only %d metrics in %v: has the code moved? (registeredMetrics)", len(code), metricSourceDirs)
	}
	text, err := os.ReadFile(filepath.Join(repoRoot, "docs/operating.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(text)
	start := strings.Index(doc, "\n### Metrics\n")
	if start < 0 {
		t.Fatal(`docs/operating.md has no "### Metrics" section`)
	}
	section := doc[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	documented := map[string]bool{}
	for _, m := range metricInDocs.FindAllStringSubmatch(section, -1) {
		documented[m[1]] = true
	}
	for name, file := range code {
		if !documented[name] {
			t.Errorf("metric %s (registered in %s) is not in the Metrics section of docs/operating.md: add a row with its type, labels, meaning and what to alert on", name, file)
		}
	}
	for name := range documented {
		if _, ok := code[name]; !ok {
			t.Errorf("docs/operating.md's Metrics section names %s, which the code does not register (renamed or removed?)", name)
		}
	}

	n := testkit.StartNode(t, testkit.NodeOptions{Args: []string{"--drain-window=0"}}) // its stop kicks the device at once
	n.Device(t, 1, "alice")                                                            // a login: some labelled metrics appear
	resp, err := http.Get("http://" + n.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	served := metricScraped.FindAllStringSubmatch(string(body), -1)
	if len(served) < 30 {
		t.Fatalf("/metrics serves only %d courier_* metrics:\n%s", len(served), body)
	}
	for _, m := range served {
		if _, ok := code[m[1]]; !ok {
			t.Errorf("/metrics serves %s, which registeredMetrics did not find in the source: teach it how that metric is named", m[1])
		}
	}
}
