//go:build bench

package bench

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

// Time limits for the servers the benchmarks start.
const (
	startTimeout = 30 * time.Second // until a server listens and answers
	stopTimeout  = 30 * time.Second // from SIGTERM until exit
)

// binPath returns the absolute path in the environment variable env and
// fails the benchmark when it is unset or not an executable file.
func binPath(b testing.TB, env string) string {
	b.Helper()
	p := os.Getenv(env)
	if p == "" {
		b.Fatalf("%s is not set: run the benchmarks with `make bench`, or set TAGLOCK_BIN and REGISTRY_BIN to absolute paths", env)
	}
	if !filepath.IsAbs(p) {
		b.Fatalf("%s=%q is not an absolute path", env, p)
	}
	fi, err := os.Stat(p)
	if err != nil {
		b.Fatalf("%s: %v", env, err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		b.Fatalf("%s=%q is not an executable file", env, p)
	}
	return p
}

// process is a server a benchmark started: taglock or the registry.
type process struct {
	name string
	Addr string // 127.0.0.1:PORT
	Pid  int
	cmd  *exec.Cmd
	mu   sync.Mutex
	tail []string      // its last output lines, for failure messages
	done chan struct{} // closed once it has exited
	err  error         // Wait's result, valid after done
	once sync.Once
}

// output returns the last lines the process printed.
func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return "    " + strings.Join(p.tail, "\n    ")
}

func (p *process) add(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.tail) == 20 {
		p.tail = p.tail[1:]
	}
	p.tail = append(p.tail, line)
}

// startProcess runs bin with args and env, finds the address it listens on
// (from a log line addrFrom recognises, or else from the sockets the process
// holds, since a quiet log level may print nothing), and polls
// http://ADDR+readyPath until it answers 200. The process gets SIGTERM when
// the benchmark ends and must then exit cleanly.
func startProcess(b testing.TB, name, bin string, args, env []string, addrFrom func(string) (string, bool), readyPath string) *process {
	b.Helper()
	p := &process{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	pr, pw, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	pw.Close()
	p.Pid = p.cmd.Process.Pid
	logged := make(chan string, 1)
	var scanned sync.WaitGroup
	scanned.Go(func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			p.add(sc.Text())
			if a, ok := addrFrom(sc.Text()); ok {
				select {
				case logged <- a:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	})
	go func() {
		scanned.Wait()
		p.err = p.cmd.Wait()
		pr.Close()
		close(p.done)
	}()
	b.Cleanup(func() { p.stop(b) })

	deadline := time.Now().Add(startTimeout)
	for p.Addr == "" {
		select {
		case p.Addr = <-logged:
			continue
		case <-p.done:
			b.Fatalf("%s exited before it listened (%v):\n%s", name, p.err, p.output())
		case <-time.After(25 * time.Millisecond):
		}
		if addrs, err := listening(p.Pid); err == nil && len(addrs) == 1 {
			p.Addr = addrs[0]
		} else if err == nil && len(addrs) > 1 {
			b.Fatalf("%s listens on %q; cannot tell which is the API", name, addrs)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not listen within %v:\n%s", name, startTimeout, p.output())
		}
	}
	url := "http://" + p.Addr + readyPath
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: GET %s did not answer 200 within %v (%v, %v):\n%s", name, url, startTimeout, resp, err, p.output())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// listening returns the 127.0.0.1 addresses on which process pid listens.
func listening(pid int) ([]string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	tcp, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return nil, err
	}
	return listeners(string(tcp), inodes)
}

// stop sends SIGTERM and waits; it reports an error unless the process
// exits with status 0 in time. It is safe to call more than once.
func (p *process) stop(b testing.TB) {
	b.Helper()
	p.once.Do(func() {
		select {
		case <-p.done:
			b.Errorf("%s had already exited (%v):\n%s", p.name, p.err, p.output())
			return
		default:
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			b.Errorf("signal %s: %v", p.name, err)
		}
		select {
		case <-p.done:
			if p.err != nil {
				b.Errorf("%s did not stop cleanly after SIGTERM: %v\n%s", p.name, p.err, p.output())
			}
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			b.Errorf("%s still running %v after SIGTERM; killed it", p.name, stopTimeout)
		}
	})
}

// rssKiB returns the process's current (VmRSS) and peak (VmHWM) resident
// set size in KiB.
func (p *process) rssKiB() (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid))
	if err != nil {
		return 0, 0, err
	}
	if rss, err = statusKiB(string(b), "VmRSS"); err != nil {
		return 0, 0, err
	}
	hwm, err = statusKiB(string(b), "VmHWM")
	return rss, hwm, err
}

// cpu returns the CPU time, user and system, that all the process's threads
// have used so far, at the kernel's 10 ms resolution.
func (p *process) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
	if err != nil {
		return 0, err
	}
	ticks, err := cpuTicks(string(b))
	return time.Duration(ticks) * (time.Second / 100), err
}

// startRegistry runs the Distribution registry as the upstream: filesystem
// storage in a temporary directory, deletes enabled, 127.0.0.1:0, logging at
// warn so it writes no line per request, and a drain timeout, without which
// it dies of SIGTERM instead of exiting 0.
func startRegistry(b testing.TB) *process {
	b.Helper()
	bin := binPath(b, "REGISTRY_BIN")
	dir := b.TempDir()
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
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
  secret: taglock-bench
  draintimeout: 5s
`, filepath.Join(dir, "data"))
	f := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(f, []byte(config), 0o600); err != nil {
		b.Fatal(err)
	}
	return startProcess(b, "registry", bin, []string{"serve", f}, environ("OTEL_TRACES_EXPORTER=none"), registryAddr, "/v2/")
}

// environ is this process's environment without the variables the registry
// reads as configuration (REGISTRY_*, OTEL_*), plus extra.
func environ(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// registryAddr finds the address in {"msg":"listening on 127.0.0.1:PORT"}.
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

// startTaglock runs `taglock serve` on 127.0.0.1:0 with logging at warn, in
// front of upstream, or with the embedded registry when upstream is "".
func startTaglock(b testing.TB, upstream string) *process {
	b.Helper()
	bin := binPath(b, "TAGLOCK_BIN")
	dir := b.TempDir()
	cfg := filepath.Join(dir, "taglock.yaml")
	if err := os.WriteFile(cfg, []byte("log: {level: warn}\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	args := []string{"serve", "--config", cfg, "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "data")}
	name := "taglock (embedded)"
	if upstream != "" {
		args = append(args, "--upstream", upstream)
		name = "taglock"
	}
	return startProcess(b, name, bin, args, environ(), taglockAddr, "/readyz")
}

// taglockAddr finds the address in {"addr":"127.0.0.1:PORT","message":"listening"}.
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

// stack is the four ways a benchmark reaches a registry: the upstream
// directly, through the control proxy, through taglock in front of it, and
// taglock with its embedded registry.
type stack struct {
	registry, control, taglock, embedded *process
	direct, bare, proxied, inproc        *target
}

// targets returns the stack's targets in a fixed order.
func (s *stack) targets() []*target { return []*target{s.direct, s.bare, s.proxied, s.inproc} }

// startStack starts a fresh registry, the control proxy and a taglock in
// front of it, and an embedded taglock, each with its own temporary storage.
func startStack(b testing.TB) *stack {
	b.Helper()
	s := &stack{registry: startRegistry(b)}
	s.control = startControl(b, "http://"+s.registry.Addr)
	s.taglock = startTaglock(b, "http://"+s.registry.Addr)
	s.embedded = startTaglock(b, "")
	s.direct = newTarget("direct", s.registry.Addr)
	s.direct.proc = s.registry
	s.bare = newTarget("control", s.control.Addr)
	s.bare.proc = s.control
	s.proxied = newTarget("taglock", s.taglock.Addr)
	s.proxied.proc = s.taglock
	s.inproc = newTarget("embedded", s.embedded.Addr)
	s.inproc.proc = s.embedded
	return s
}
