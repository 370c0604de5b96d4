//go:build bench

package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taglock/taglock/integration/internal/proc"
)

// process is a server a benchmark started: taglock, the registry or the
// control proxy.
type process = proc.Process

// rssKiB returns p's current (VmRSS) and peak (VmHWM) resident set size in
// KiB.
func rssKiB(p *process) (rss, hwm int64, err error) {
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

// cpuTime returns the CPU time, user and system, that all of p's threads
// and its live child processes (nginx's worker) have used so far, at the
// kernel's 10 ms resolution.
func cpuTime(p *process) (time.Duration, error) {
	ticks, err := treeTicks(p.Pid)
	return time.Duration(ticks) * (time.Second / 100), err
}

// treeTicks returns the CPU ticks of process pid and of its descendants.
func treeTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	total, err := cpuTicks(string(b))
	if err != nil {
		return 0, err
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	for _, task := range tasks {
		kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue // the thread has exited
		}
		for _, kid := range strings.Fields(string(kids)) {
			n, err := strconv.Atoi(kid)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/task/%s/children: %q", pid, task.Name(), kid)
			}
			t, err := treeTicks(n)
			if err != nil {
				continue // the child has exited
			}
			total += t
		}
	}
	return total, nil
}

// machineTime returns how long the whole machine's CPUs, all of them
// together, have been busy and idle since boot, at the kernel's 10 ms
// resolution.
func machineTime() (busy, idle time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	bt, it, err := machineTicks(string(b))
	return time.Duration(bt) * (time.Second / 100), time.Duration(it) * (time.Second / 100), err
}

// startTaglock runs `taglock serve` on 127.0.0.1:0 with logging at warn, in
// front of upstream, or with the embedded registry when upstream is "".
func startTaglock(b testing.TB, upstream string) *process {
	b.Helper()
	bin := proc.Tool(b, "TAGLOCK_BIN")
	dir := b.TempDir()
	cfg := filepath.Join(dir, "taglock.yaml")
	if err := os.WriteFile(cfg, []byte("log: {level: warn}\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	if upstream != "" {
		if p := startProfiledTaglock(b, cfg, filepath.Join(dir, "data"), upstream); p != nil {
			return p
		}
	}
	args := []string{"serve", "--config", cfg, "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "data")}
	name := "taglock (embedded)"
	if upstream != "" {
		args = append(args, "--upstream", upstream)
		name = "taglock"
	}
	return proc.Start(b, proc.Spec{Name: name, Bin: bin, Args: args, Env: proc.Environ(), AddrFrom: proc.TaglockAddr, Ready: "/readyz"})
}

// stack is the five ways a benchmark reaches a registry: the upstream
// directly, through the control proxy, through nginx, through taglock in
// front of it, and taglock with its embedded registry.
type stack struct {
	registry, control, nginx, taglock, embedded *process
	direct, bare, ref, proxied, inproc          *target
}

// targets returns the stack's targets in a fixed order.
func (s *stack) targets() []*target {
	return []*target{s.direct, s.bare, s.ref, s.proxied, s.inproc}
}

// startStack starts a fresh registry, the control proxy, nginx and a
// taglock in front of it, and an embedded taglock, each with its own
// temporary storage.
func startStack(b testing.TB) *stack {
	b.Helper()
	s := &stack{registry: proc.StartRegistry(b, "warn")}
	s.control = startControl(b, "http://"+s.registry.Addr)
	s.nginx = startNginx(b, s.registry.Addr)
	s.taglock = startTaglock(b, "http://"+s.registry.Addr)
	s.embedded = startTaglock(b, "")
	s.direct = newTarget("direct", s.registry.Addr)
	s.direct.proc = s.registry
	s.bare = newTarget("control", s.control.Addr)
	s.bare.proc = s.control
	s.ref = newTarget("nginx", s.nginx.Addr)
	s.ref.proc = s.nginx
	s.proxied = newTarget("taglock", s.taglock.Addr)
	s.proxied.proc = s.taglock
	s.inproc = newTarget("embedded", s.embedded.Addr)
	s.inproc.proc = s.embedded
	return s
}
