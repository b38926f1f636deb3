package gate_test

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/courier-im/courier/gate"
)

// deviceToken is docs/api.md's example of how an app-server mints a
// device token in Go, word for word.
func deviceToken(secret []byte, app uint16, uid string, lifetime time.Duration) (string, error) {
	now := time.Now()
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": uid, "app": app, "iat": now.Unix(), "exp": now.Add(lifetime).Unix(),
	}).SignedString(secret)
}

// TestDocTokenExample checks that the documented way of minting tokens
// produces tokens the gate accepts, and that one above the maximum
// lifetime is refused.
func TestDocTokenExample(t *testing.T) {
	secret := []byte("a-secret-of-at-least-16-bytes")
	auth := gate.NewJWTAuthenticator(map[uint16][]byte{2: secret}, 7*24*time.Hour)
	tok, err := deviceToken(secret, 2, "driver-17", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.Verify(2, "driver-17", tok); err != nil {
		t.Fatalf("the documented token is refused: %v", err)
	}
	long, _ := deviceToken(secret, 2, "driver-17", 8*24*time.Hour)
	if err := auth.Verify(2, "driver-17", long); err == nil {
		t.Fatal("a token above the maximum lifetime was accepted")
	}
}

// TestDocTokenExamplesAreTheDocs checks that docs/api.md shows the Go
// example above and runs its Python example, whose token the gate must
// accept.
func TestDocTokenExamplesAreTheDocs(t *testing.T) {
	b, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	src, err := os.ReadFile("token_doc_test.go")
	if err != nil {
		t.Fatal(err)
	}
	goFunc := regexp.MustCompile(`(?s)func deviceToken\(.*?\n}\n`).FindString(string(src))
	if goFunc == "" || !strings.Contains(doc, "```go\n"+goFunc+"```") {
		t.Fatalf("docs/api.md does not show the Go example:\n%s", goFunc)
	}
	py := regexp.MustCompile("(?s)```python\n(.*?)```").FindStringSubmatch(doc)
	if py == nil {
		t.Fatal("docs/api.md has no Python example")
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is not installed (.ci/run installs it): the Python example is not run")
		}
		t.Skip("python3 is not installed: the Python example is not run")
	}
	out, err := exec.Command(python, "-c", py[1]+"\nprint(device_token(b'a-secret-of-at-least-16-bytes', 2, 'driver-17'))\n").CombinedOutput()
	if err != nil {
		t.Fatalf("the Python example: %v\n%s", err, out)
	}
	auth := gate.NewJWTAuthenticator(map[uint16][]byte{2: []byte("a-secret-of-at-least-16-bytes")}, 7*24*time.Hour)
	if err := auth.Verify(2, "driver-17", strings.TrimSpace(string(out))); err != nil {
		t.Fatalf("the Python example's token is refused: %v", err)
	}
}
