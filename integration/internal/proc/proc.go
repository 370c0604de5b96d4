// Package proc starts and stops the server processes the end-to-end tests
// and the benchmarks run: the built taglock binary, the Distribution registry,
// etcd clusters, and the benchmarks' control proxy and nginx.
//
// It owns process lifetime: start, find the listening address, wait until
// the server answers, SIGTERM at the end and insist on a clean exit. It must
// not know what the tests do with the servers.
package proc

import (
	"bufio"
	"encoding/json"
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

// Time limits, generous for 2 busy cores, that still end a hung run.
const (
	StartTimeout = 30 * time.Second // until a server listens and answers
	StopTimeout  = 30 * time.Second // from SIGTERM until exit
)

// Tool returns the absolute path of the program that environment variable
// env names, and fails the test when it is unset, relative or not an
// executable file. scripts/test.sh and scripts/bench.sh set every one.
func Tool(t testing.TB, env string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		t.Fatalf("%s is not set: run through `make test` or `make bench`, which install the tools and set it", env)
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

// Spec describes a server to start.
type Spec struct {
	Name string
	Bin  string
	Args []string
	Env  []string
	// Keep selects the output lines kept for failure messages; nil keeps all.
	Keep func(line string) bool
	// AddrFrom finds the listening address in one line of output; nil
	// leaves it to Sockets.
	AddrFrom func(line string) (string, bool)
	// Sockets, when AddrFrom finds nothing, reads the address from the
	// sockets the process listens on (a quiet log level may print nothing).
	Sockets bool
	// Ready is polled until it answers 200: a path such as "/readyz" on
	// http://Addr, or a full URL when it contains "://" and %s for Addr.
	Ready string
	// Client polls Ready; default http.DefaultClient.
	Client *http.Client
	// ExtraFiles are open files the process inherits as fds 3, 4, …: a
	// listening socket the caller bound on 127.0.0.1:0, for a server that
	// cannot bind port 0 and report it.
	ExtraFiles []*os.File
}

// Process is a running server.
type Process struct {
	Name string
	Addr string // host:port it listens on
	Pid  int
	// Started is when the process was started, Listened when its output
	// named the address (zero when found from its sockets) and Ready when
	// Ready first answered 200.
	Started, Listened, Ready time.Time
	cmd                      *exec.Cmd
	mu                       sync.Mutex
	out                      []string
	done                     chan struct{} // closed once it has exited
	err                      error         // Wait's result, valid after done
	once                     sync.Once
}

// Start runs s, finds its address and waits until it answers. The process
// gets SIGTERM when the test ends and must then exit with status 0; on a
// failed test its last lines are logged.
func Start(t testing.TB, s Spec) *Process {
	t.Helper()
	p := &Process{Name: s.Name, done: make(chan struct{})}
	p.cmd = exec.Command(s.Bin, s.Args...)
	p.cmd.Env = s.Env
	p.cmd.ExtraFiles = s.ExtraFiles
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	p.Started = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", s.Name, err)
	}
	pw.Close()
	p.Pid = p.cmd.Process.Pid
	type found struct {
		addr string
		at   time.Time
	}
	logged := make(chan found, 1)
	var scanned sync.WaitGroup
	scanned.Go(func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			if s.Keep == nil || s.Keep(line) {
				p.add(line)
			}
			if s.AddrFrom == nil {
				continue
			}
			if a, ok := s.AddrFrom(line); ok {
				select {
				case logged <- found{a, time.Now()}:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr) // a line over 4 MiB: keep the pipe drained
	})
	go func() {
		scanned.Wait()
		p.err = p.cmd.Wait()
		pr.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("last lines logged by %s:\n%s", p.Name, p.Tail(60))
		}
	})

	deadline := time.Now().Add(StartTimeout)
	for p.Addr == "" {
		select {
		case f := <-logged:
			p.Addr, p.Listened = f.addr, f.at
			continue
		case <-p.done:
			t.Fatalf("%s exited before it listened (%v):\n%s", s.Name, p.err, p.Tail(60))
		case <-time.After(25 * time.Millisecond):
		}
		if s.Sockets {
			if addrs, err := Listening(p.Pid); err == nil && len(addrs) == 1 {
				p.Addr = addrs[0]
			} else if err == nil && len(addrs) > 1 {
				t.Fatalf("%s listens on %q; cannot tell which is the API", s.Name, addrs)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen within %v:\n%s", s.Name, StartTimeout, p.Tail(60))
		}
	}
	client := s.Client
	if client == nil {
		client = http.DefaultClient
	}
	url := "http://" + p.Addr + s.Ready
	if strings.Contains(s.Ready, "://") {
		url = fmt.Sprintf(s.Ready, p.Addr)
	}
	for {
		resp, err := client.Get(url)
		last := ""
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.Ready = time.Now()
				return p
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: GET %s did not answer 200 within %v (last: %s):\n%s", s.Name, url, StartTimeout, last, p.Tail(60))
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited while starting (%v):\n%s", s.Name, p.err, p.Tail(60))
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func (p *Process) add(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out = append(p.out, line)
}

// Output is everything the process printed so far (of the kept lines).
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.out, "\n")
}

// Tail is the last n kept lines, indented for a failure message.
func (p *Process) Tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.out) == 0 {
		return "    (no output)"
	}
	return "    " + strings.Join(p.out[max(0, len(p.out)-n):], "\n    ")
}

// Stop sends SIGTERM and waits; it reports an error unless the process exits
// with status 0 within StopTimeout. It is safe to call more than once.
func (p *Process) Stop(t testing.TB) {
	t.Helper()
	p.once.Do(func() {
		select {
		case <-p.done:
			t.Errorf("%s had already exited (%v):\n%s", p.Name, p.err, p.Tail(40))
			return
		default:
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Errorf("signal %s: %v", p.Name, err)
		}
		select {
		case <-p.done:
			if p.err != nil {
				t.Errorf("%s did not stop cleanly after SIGTERM: %v\n%s", p.Name, p.err, p.Tail(40))
			}
		case <-time.After(StopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			t.Errorf("%s still running %v after SIGTERM; killed it", p.Name, StopTimeout)
		}
	})
}

// Kill sends SIGKILL, as a crash would, and waits for the process to end;
// Stop afterwards does nothing.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	p.once.Do(func() {
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Errorf("kill %s: %v", p.Name, err)
		}
		<-p.done
	})
}

// Environ is this process's environment without the variables the registry
// reads as configuration (REGISTRY_*, OTEL_*), plus extra.
func Environ(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// TaglockAddr finds the address in taglock's
// {"addr":"127.0.0.1:PORT",...,"message":"listening"}.
func TaglockAddr(line string) (string, bool) {
	var m struct {
		Message string `json:"message"`
		Addr    string `json:"addr"`
	}
	if json.Unmarshal([]byte(line), &m) != nil || m.Message != "listening" || m.Addr == "" {
		return "", false
	}
	return m.Addr, true
}

// RegistryAddr finds the address in Distribution's
// {"msg":"listening on 127.0.0.1:PORT",...}.
func RegistryAddr(line string) (string, bool) {
	var m struct {
		Msg string `json:"msg"`
	}
	if json.Unmarshal([]byte(line), &m) != nil {
		return "", false
	}
	addr, ok := strings.CutPrefix(m.Msg, "listening on ")
	return addr, ok && addr != ""
}

// StartRegistry runs the Distribution registry binary (env REGISTRY_BIN) as
// a separate upstream: filesystem storage in a temporary directory, deletes
// enabled, 127.0.0.1:0, JSON logs at level, and a drain timeout, without
// which it dies of SIGTERM instead of exiting 0.
func StartRegistry(t testing.TB, level string) *Process {
	t.Helper()
	bin := Tool(t, "REGISTRY_BIN")
	dir := t.TempDir()
	config := fmt.Sprintf(`version: 0.1
log:
  level: %s
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
  secret: taglock-tests
  draintimeout: 5s
`, level, filepath.Join(dir, "data"))
	f := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(f, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return Start(t, Spec{Name: "registry", Bin: bin, Args: []string{"serve", f}, Env: Environ("OTEL_TRACES_EXPORTER=none"),
		// one line per request: too many to read next to taglock's own
		Keep:     func(line string) bool { return !strings.Contains(line, `"msg":"response completed`) },
		AddrFrom: RegistryAddr, Sockets: true, Ready: "/v2/"})
}
