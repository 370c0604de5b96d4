//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Time limits. They are generous for 2 busy cores and still end a hung run.
const (
	cmdTimeout   = 3 * time.Minute  // one CLI invocation
	startTimeout = 30 * time.Second // until a server logs its address and answers
	stopTimeout  = 30 * time.Second // from SIGTERM until exit
)

// toolPath returns the absolute path of the program that the environment
// variable env names, and fails the test when it is unset, relative or not
// an executable file. scripts/test.sh sets every one of them.
func toolPath(t testing.TB, env string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		t.Fatalf("%s is not set: run the end-to-end tests with `make test` (scripts/test.sh), which installs the tools and sets it", env)
	}
	if !filepath.IsAbs(p) {
		t.Fatalf("%s=%q is not an absolute path", env, p)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("%s: %v", env, err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		t.Fatalf("%s=%q is not an executable file", env, p)
	}
	return p
}

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

// lines collects a process's output, line by line, safe for concurrent use.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, s)
}

// String returns everything collected so far.
func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// tail returns the last n lines.
func (l *lines) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	from := max(0, len(l.all)-n)
	return strings.Join(l.all[from:], "\n")
}

// process is a server started by a test: taglock or the Distribution registry.
type process struct {
	name string
	keep func(line string) bool // which log lines to collect; nil keeps all
	Addr string                 // host:port it listens on, read from its log
	cmd  *exec.Cmd
	out  *lines
	done chan struct{} // closed once the process has exited
	err  error         // Wait's result, valid after done
	once sync.Once
}

// startProcess starts bin with args, reads its stdout and stderr line by line
// until addrFrom finds the listening address in one of them, then polls
// http://ADDR+readyPath until it answers 200. The process is stopped with
// SIGTERM when the test ends, and must then exit with status 0.
func startProcess(t *testing.T, p *process, bin string, args, env []string, addrFrom func(line string) (string, bool), readyPath string) *process {
	t.Helper()
	name := p.name
	p.out, p.done = &lines{}, make(chan struct{})
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	addrc := make(chan string, 1)
	var readers sync.WaitGroup
	scan := func(r io.Reader) {
		defer readers.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			line := sc.Text()
			if p.keep == nil || p.keep(line) {
				p.out.add(line)
			}
			if a, ok := addrFrom(line); ok {
				select {
				case addrc <- a:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, r) // a line over 4 MiB: keep the pipe drained
	}
	readers.Add(2)
	go scan(stdout)
	go scan(stderr)
	go func() {
		readers.Wait() // Wait closes the pipes: read them to the end first
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("last lines logged by %s:\n%s", name, indent(p.out.tail(60)))
		}
	})

	select {
	case p.Addr = <-addrc:
	case <-p.done:
		t.Fatalf("%s exited before it listened (%v):\n%s", name, p.err, indent(p.out.String()))
	case <-time.After(startTimeout):
		t.Fatalf("%s logged no listening address within %v:\n%s", name, startTimeout, indent(p.out.String()))
	}
	deadline := time.Now().Add(startTimeout)
	url := "http://" + p.Addr + readyPath
	for {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: GET %s did not answer 200 within %v (last: %v)", name, url, startTimeout, describe(resp, err))
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited while starting (%v):\n%s", name, p.err, indent(p.out.String()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func describe(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// Stop sends SIGTERM and waits for the process to exit; it reports an error
// unless the process exits with status 0 within stopTimeout. It is safe to
// call more than once.
func (p *process) Stop(t testing.TB) {
	t.Helper()
	p.once.Do(func() {
		select {
		case <-p.done:
			t.Errorf("%s had already exited (%v):\n%s", p.name, p.err, indent(p.out.tail(40)))
			return
		default:
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Errorf("signal %s: %v", p.name, err)
		}
		select {
		case <-p.done:
			if p.err != nil {
				t.Errorf("%s did not shut down cleanly after SIGTERM: %v\n%s", p.name, p.err, indent(p.out.tail(40)))
			}
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			t.Errorf("%s still running %v after SIGTERM; killed it", p.name, stopTimeout)
		}
	})
}

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
	bin := toolPath(t, "TAGLOCK_BIN")
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
	p := startProcess(t, &process{name: "taglock"}, bin, args, os.Environ(), taglockAddr, "/readyz")
	return &taglock{process: p, Data: o.data}
}

// taglockAddr finds the address in taglock's zerolog line
// {"level":"info","addr":"127.0.0.1:PORT",...,"message":"listening"}.
func taglockAddr(line string) (string, bool) {
	var m struct {
		Message string `json:"message"`
		Addr    string `json:"addr"`
	}
	if json.Unmarshal([]byte(line), &m) != nil || m.Message != "listening" || m.Addr == "" {
		return "", false
	}
	return m.Addr, true
}

// startRegistry runs the Distribution registry binary as a separate upstream:
// filesystem storage in a temporary directory, deletes enabled, bound to
// 127.0.0.1:0. It returns the address the registry logged.
func startRegistry(t *testing.T) *process {
	t.Helper()
	bin := toolPath(t, "REGISTRY_BIN")
	dir := t.TempDir()
	config := fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: json
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: taglock-e2e
  draintimeout: 5s # without it the registry ignores SIGTERM's chance to exit cleanly
`, filepath.Join(dir, "data"))
	f := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(f, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	// The registry reads REGISTRY_* variables as configuration: pass none.
	env := command{drop: []string{"REGISTRY_", "OTEL_"}, env: []string{"OTEL_TRACES_EXPORTER=none"}}.environ()
	p := &process{name: "registry", keep: func(line string) bool {
		// one line per request: too many to read next to taglock's own
		return !strings.Contains(line, `"msg":"response completed`)
	}}
	return startProcess(t, p, bin, []string{"serve", f}, env, registryAddr, "/v2/")
}

// registryAddr finds the address in Distribution's JSON log line
// {"level":"info","msg":"listening on 127.0.0.1:PORT",...}.
func registryAddr(line string) (string, bool) {
	var m struct {
		Msg string `json:"msg"`
	}
	if json.Unmarshal([]byte(line), &m) != nil {
		return "", false
	}
	addr, ok := strings.CutPrefix(m.Msg, "listening on ")
	return addr, ok && addr != ""
}
