package proc

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EtcdCluster is a cluster of etcd server processes (env ETCD_BIN, Debian's
// etcd 3.4) on loopback ports chosen when the test runs, with their data in
// the test's temporary directory. Members can be stopped and started
// again on the same ports and data, to take quorum away and give it back.
// Every member is stopped when the test ends.
type EtcdCluster struct {
	t       testing.TB
	bin     string
	members []*etcdMember
	initial string
}

type etcdMember struct {
	name, dir, client, peer string

	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

// StartEtcdCluster starts n members and waits until each reports a healthy
// cluster (it has a leader). etcd 3.4 must be ETCD_BIN.
func StartEtcdCluster(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	c := &EtcdCluster{t: t, bin: Tool(t, "ETCD_BIN")}
	out, err := exec.Command(c.bin, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "etcd Version: 3.4.") {
		t.Fatalf("ETCD_BIN %s is not etcd 3.4 (%v): %s", c.bin, err, out)
	}
	var initial []string
	for i := range n {
		m := &etcdMember{name: fmt.Sprintf("m%d", i), dir: filepath.Join(t.TempDir(), fmt.Sprintf("m%d", i)),
			client: freeAddr(t), peer: freeAddr(t)}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"=http://"+m.peer)
	}
	c.initial = strings.Join(initial, ",")
	for i := range c.members {
		c.Start(i)
	}
	for i := range c.members {
		c.WaitHealthy(i)
	}
	return c
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Start runs member i (again, after Stop) and returns at once.
func (c *EtcdCluster) Start(i int) {
	c.t.Helper()
	m := c.members[i]
	cmd := exec.Command(c.bin, "--name", m.name, "--data-dir", m.dir,
		"--listen-client-urls", "http://"+m.client, "--advertise-client-urls", "http://"+m.client,
		"--listen-peer-urls", "http://"+m.peer, "--initial-advertise-peer-urls", "http://"+m.peer,
		"--initial-cluster", c.initial, "--initial-cluster-state", "new", "--initial-cluster-token", "taglock-tests",
		"--heartbeat-interval", "100", "--election-timeout", "1000")
	cmd.Env = Environ()
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	m.mu.Lock()
	m.cmd, m.out, m.done = cmd, out, done
	m.mu.Unlock()
	c.t.Cleanup(func() { stopEtcd(cmd, done) })
}

// Stop ends member i with SIGTERM, as an operator or a node drain would,
// and waits for it. Stopping a stopped member does nothing.
func (c *EtcdCluster) Stop(i int) {
	m := c.members[i]
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	stopEtcd(cmd, done)
}

// stopEtcd ends an etcd process. etcd 3.4 ends on SIGTERM by the signal
// rather than with status 0, so its status is not checked.
func stopEtcd(cmd *exec.Cmd, done chan struct{}) {
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(StopTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

// WaitHealthy waits until member i reports a healthy cluster.
func (c *EtcdCluster) WaitHealthy(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	done, out := m.done, m.out
	m.mu.Unlock()
	deadline := time.Now().Add(StartTimeout)
	for {
		resp, err := http.Get("http://" + m.client + "/health")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"true"`) {
				return
			}
		}
		select {
		case <-done:
			c.t.Fatalf("etcd member %s exited:\n%s", m.name, out)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("etcd member %s not healthy within %s", m.name, StartTimeout)
		}
	}
}

// Endpoints are the members' client URLs.
func (c *EtcdCluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, "http://"+m.client)
	}
	return out
}
