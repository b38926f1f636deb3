package messages

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/courier-im/courier/messages/apipb"
	"github.com/courier-im/courier/messages/devicepb"
)

// These tests keep the docs complete as the schemas grow: a code, a
// kickout reason, a command or an API method added without its
// documentation fails them, with a message that says what to add where.

// enumRow is a row "| 20 | `AUTH_FAILED` | ..." of a table whose header
// starts with "value | name".
var enumRow = regexp.MustCompile("^\\|\\s*(\\d+)\\s*\\|\\s*`([A-Z0-9_]+)`\\s*\\|")

// TestProtocolDocListsEveryCodeAndReason: every value of Code and of
// KickReason in device.proto has a row in a "value | name" table of
// docs/protocol.md with its number, and every such row names a value that
// exists, with its number.
func TestProtocolDocListsEveryCodeAndReason(t *testing.T) {
	text := readDoc(t, "../docs/protocol.md")
	enums := []protoreflect.EnumDescriptor{devicepb.Code(0).Descriptor(), devicepb.KickReason(0).Descriptor()}
	listed := map[string]bool{}
	inTable := false
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case !strings.HasPrefix(trimmed, "|"):
			inTable = false
			continue
		case regexp.MustCompile(`^\|\s*value\s*\|\s*name\s*\|`).MatchString(trimmed):
			inTable = true
			continue
		case !inTable:
			continue
		}
		m := enumRow.FindStringSubmatch(trimmed)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		var found protoreflect.EnumValueDescriptor
		for _, e := range enums {
			if v := e.Values().ByName(protoreflect.Name(m[2])); v != nil {
				found = v
			}
		}
		switch {
		case found == nil:
			t.Errorf("docs/protocol.md:%d: %s is no value of Code or KickReason in messages/proto/courier/device/v1/device.proto (renamed or removed?)", i+1, m[2])
		case int(found.Number()) != n:
			t.Errorf("docs/protocol.md:%d: %s is %d in device.proto, not %d", i+1, m[2], found.Number(), n)
		default:
			listed[m[2]] = true
		}
	}
	where := map[protoreflect.FullName]string{
		"courier.device.v1.Code":       `a table of "## 6. Result and error codes" (the one for the frames that carry it)`,
		"courier.device.v1.KickReason": `the table of "## 7. Kickout reasons"`,
	}
	for _, e := range enums {
		for i := range e.Values().Len() {
			v := e.Values().Get(i)
			if !listed[string(v.Name())] {
				t.Errorf("docs/protocol.md does not list %s %s = %d: add a row to %s: | %d | `%s` | ... | what the client should do |",
					e.Name(), v.Name(), v.Number(), where[e.FullName()], v.Number(), v.Name())
			}
		}
	}
}

// TestProtocolDocListsEveryCommand: the command table of docs/protocol.md
// has a row "| `0x01` | LOGIN | ..." for each command the codec knows.
func TestProtocolDocListsEveryCommand(t *testing.T) {
	text := readDoc(t, "../docs/protocol.md")
	row := regexp.MustCompile("(?m)^\\|\\s*`0x([0-9A-Fa-f]{2})`\\s*\\|\\s*([A-Z0-9_]+)\\s*\\|")
	seen := map[Cmd]bool{}
	for _, m := range row.FindAllStringSubmatch(text, -1) {
		code, _ := strconv.ParseUint(m[1], 16, 8)
		c := Cmd(code)
		if !c.Known() || c.String() != m[2] {
			t.Errorf("docs/protocol.md: the command row 0x%s %s is not a command of messages/cmd.go (%s)", m[1], m[2], c)
			continue
		}
		seen[c] = true
	}
	for c := range 256 {
		if cmd := Cmd(c); cmd.Known() && !seen[cmd] {
			t.Errorf("docs/protocol.md does not list command %s: add a row to the table of \"## 3. Commands\": | `0x%02X` | %s | c→s or s→c | body | sent when | answer |", cmd, c, cmd)
		}
	}
}

// TestAPIDocListsEveryMethod: docs/api.md shows every method of
// courier.v1.Courier (as a call, "Name(", or by its name in backquotes)
// and names every field of its request message.
func TestAPIDocListsEveryMethod(t *testing.T) {
	text := readDoc(t, "../docs/api.md")
	svc := apipb.File_courier_v1_api_proto.Services().ByName("Courier")
	if svc == nil {
		t.Fatal("no service courier.v1.Courier")
	}
	for i := range svc.Methods().Len() {
		m := svc.Methods().Get(i)
		if !strings.Contains(text, string(m.Name())+"(") && !strings.Contains(text, "`"+string(m.Name())+"`") {
			t.Errorf("docs/api.md does not show the method %s: give it a section (or a line in one) with its call, e.g. `%s(%s)`, what it does, its limits and its errors",
				m.Name(), m.Name(), fieldList(m.Input()))
			continue
		}
		fields := m.Input().Fields()
		for j := range fields.Len() {
			f := fields.Get(j)
			if !regexp.MustCompile(`\b` + regexp.QuoteMeta(string(f.Name())) + `\b`).MatchString(text) {
				t.Errorf("docs/api.md does not name field %s of %s (the request of %s): say what it means, its range and default",
					f.Name(), m.Input().Name(), m.Name())
			}
		}
	}
}

func fieldList(md protoreflect.MessageDescriptor) string {
	var names []string
	for i := range md.Fields().Len() {
		names = append(names, string(md.Fields().Get(i).Name()))
	}
	return strings.Join(names, ", ")
}

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(fmt.Errorf("%s: %w", path, err))
	}
	return string(b)
}

// TestProtocolDocSchemaIsDeviceProto: the appendix of docs/protocol.md is
// the schema clients generate their classes from; it must be
// device.proto, line for line once comments and blank lines are left out
// (it said "uint32 limit" where the schema has "optional uint32 limit",
// and code generated from it could not send a PULL limit of 0).
func TestProtocolDocSchemaIsDeviceProto(t *testing.T) {
	doc := readDoc(t, "../docs/protocol.md")
	i := strings.Index(doc, "## Appendix: the body schema")
	if i < 0 {
		t.Fatal("docs/protocol.md has no appendix with the body schema")
	}
	start := strings.Index(doc[i:], "```protobuf\n")
	if start < 0 {
		t.Fatal("the appendix has no ```protobuf block")
	}
	block := doc[i+start+len("```protobuf\n"):]
	end := strings.Index(block, "```")
	if end < 0 {
		t.Fatal("the appendix's ```protobuf block is not closed")
	}
	block = block[:end]
	if strings.Contains(block, "/*") {
		t.Fatal("the appendix has a /* */ comment, which this test does not strip: use //")
	}
	want := schemaLines(readDoc(t, "proto/courier/device/v1/device.proto"))
	got := schemaLines(block)
	for k := 0; k < max(len(want), len(got)); k++ {
		var w, g string
		if k < len(want) {
			w = want[k]
		}
		if k < len(got) {
			g = got[k]
		}
		if w != g {
			t.Fatalf("docs/protocol.md's schema differs from device.proto at its line %d (comments and blank lines left out):\n  doc:    %q\n  schema: %q", k+1, g, w)
		}
	}
}

// schemaLines returns a .proto text's lines without comments, blank lines
// and surrounding spaces.
func schemaLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if j := strings.Index(l, "//"); j >= 0 {
			l = l[:j]
		}
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
