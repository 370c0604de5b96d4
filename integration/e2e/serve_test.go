//go:build e2e

package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/taglock/taglock/integration/internal/proc"
)

// TestConfigValidate ensures that `taglock config validate` accepts a valid
// file with exit status 0 and rejects a bad one with a non-zero status and a
// message that names the file and the line of each problem.
func TestConfigValidate(t *testing.T) {
	t.Parallel()
	bin := proc.Tool(t, "TAGLOCK_BIN")
	tests := []struct {
		name     string
		yaml     string
		wantOK   bool
		wantLine string // the line the message must name ("" when valid)
		wantText string // and what it must say about it
	}{
		{name: "valid", wantOK: true, yaml: "listen: 127.0.0.1:5000\n" + mutableConformance},
		{name: "unknown key", wantLine: "3", wantText: "immutabilty",
			yaml: "listen: 127.0.0.1:5000\ndata: ./d\nimmutabilty:\n  default: immutable\n"},
		{name: "invalid mode", wantLine: "4", wantText: "sometimes",
			yaml: "immutability:\n  default: immutable\n  rules:\n    - mode: sometimes\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := filepath.Join(t.TempDir(), "taglock.yaml")
			if err := os.WriteFile(f, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := run(t, command{bin: bin, args: []string{"config", "validate", "--config", f}})
			if tc.wantOK {
				if err != nil {
					t.Fatalf("config validate rejected a valid file: %v\n%s", err, indent(out))
				}
				return
			}
			if err == nil {
				t.Fatalf("config validate accepted a bad file:\n%s", indent(out))
			}
			want := regexp.MustCompile(regexp.QuoteMeta(f) + ":" + tc.wantLine + `\b`)
			if !want.MatchString(out) {
				t.Errorf("config validate output does not name %s:%s:\n%s", f, tc.wantLine, indent(out))
			}
			wantContains(t, "config validate output", out, tc.wantText)
		})
	}
}

// TestServeHealth ensures that a served taglock answers /healthz and /readyz
// with 200 and the registry API's version check at /v2/, and shuts down with
// status 0 on SIGTERM (checked when the test ends).
func TestServeHealth(t *testing.T) {
	t.Parallel()
	tl := startTaglock(t, serveOptions{})
	for _, path := range []string{"/healthz", "/readyz", "/v2/"} {
		resp, err := http.Get("http://" + tl.Addr + path)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s, want 200 OK", path, resp.Status)
		}
	}
}
