//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taglock/taglock/integration/internal/proc"
)

// cmdTimeout bounds one CLI invocation: generous for 2 busy cores, and it
// still ends a hung run.
const cmdTimeout = 3 * time.Minute

// command describes one CLI invocation.
type command struct {
	bin  string   // absolute path
	args []string //
	env  []string // added to the test process's environment
	drop []string // prefixes of inherited variables to leave out, e.g. "OCI_"
	dir  string   // working directory; "" = the test's
}

// environ is the test process's environment less the variables c drops,
// plus c's own.
func (c command) environ() []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		for _, p := range c.drop {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		env = append(env, kv)
	}
	return append(env, c.env...)
}

// run runs c, waits at most cmdTimeout, and returns its combined output and
// the error exec reports (nil for exit status 0). It logs the command line
// and the output, which `go test` shows when the test fails.
func run(t testing.TB, c command) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, c.args...)
	cmd.Env = c.environ()
	cmd.Dir = c.dir
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w after %v", ctx.Err(), cmdTimeout)
	}
	t.Logf("$ %s %s  (%v, err=%v)\n%s", filepath.Base(c.bin), strings.Join(c.args, " "),
		time.Since(start).Round(time.Millisecond), err, indent(string(out)))
	return string(out), err
}

// mustRun is run that fails the test unless the command exits 0.
func mustRun(t testing.TB, c command) string {
	t.Helper()
	out, err := run(t, c)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(c.bin), strings.Join(c.args, " "), err, out)
	}
	return out
}

// mustFail is run that fails the test if the command exits 0: the caller
// expects a refusal.
func mustFail(t testing.TB, c command) string {
	t.Helper()
	out, err := run(t, c)
	if err == nil {
		t.Fatalf("%s %s succeeded; want it refused\n%s", filepath.Base(c.bin), strings.Join(c.args, " "), out)
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		t.Fatalf("%s %s did not run to a refusal: %v\n%s", filepath.Base(c.bin), strings.Join(c.args, " "), err, out)
	}
	return out
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// process is a server started by a test: taglock or the Distribution
// registry.
type process = proc.Process

// serveOptions are the knobs of one `taglock serve` run.
type serveOptions struct {
	config   string // YAML written to a file and passed with --config; "" passes no --config (built-in defaults)
	upstream string // --upstream URL; "" = embedded registry
	data     string // --data directory; "" = a fresh t.TempDir()
}

// taglock is a running `taglock serve` process.
type taglock struct {
	*process
	Data string // its data directory; the ledger is Data/ledger.db
}

// startTaglock runs the built binary with --listen 127.0.0.1:0, reads the
// bound address from its "listening" log line and waits for /readyz.
func startTaglock(t *testing.T, o serveOptions) *taglock {
	t.Helper()
	bin := proc.Tool(t, "TAGLOCK_BIN")
	if o.data == "" {
		o.data = t.TempDir()
	}
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", o.data}
	if o.config != "" {
		f := filepath.Join(t.TempDir(), "taglock.yaml")
		if err := os.WriteFile(f, []byte(o.config), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", f)
	}
	if o.upstream != "" {
		args = append(args, "--upstream", o.upstream)
	}
	p := proc.Start(t, proc.Spec{Name: "taglock", Bin: bin, Args: args, Env: os.Environ(), AddrFrom: proc.TaglockAddr, Ready: "/readyz"})
	return &taglock{process: p, Data: o.data}
}
