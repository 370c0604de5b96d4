//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/taglock/taglock/integration/internal/proc"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/etcd"
	"github.com/taglock/taglock/storage/ledgertest"
)

// etcdServer is an etcd server process a test started.
type etcdServer struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

// startEtcd runs the etcd server ETCD_BIN names (Debian's etcd-server, 3.4)
// as a one-member cluster on loopback ports, with its data in the test's
// temporary directory, waits until /health answers and returns its client
// URL. etcd 3.4 ends on SIGTERM by the signal rather than with status 0,
// so it is run here rather than with proc.Start.
func startEtcd(t *testing.T) (*etcdServer, string) {
	t.Helper()
	bin := proc.Tool(t, "ETCD_BIN")
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "etcd Version: 3.4.") {
		t.Fatalf("ETCD_BIN %s is not etcd 3.4 (%v): %s", bin, err, out)
	}
	client, peer := freePort(t), freePort(t)
	e := &etcdServer{out: &bytes.Buffer{}, done: make(chan struct{})}
	e.cmd = exec.Command(bin, "--name", "default", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "default=http://"+peer)
	e.cmd.Env = proc.Environ()
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = e.cmd.Wait(); close(e.done) }()
	t.Cleanup(e.stop)
	deadline := time.Now().Add(proc.StartTimeout)
	for {
		resp, err := http.Get("http://" + client + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return e, "http://" + client
			}
		}
		select {
		case <-e.done:
			t.Fatalf("etcd exited while starting:\n%s", e.out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not answer /health within %s", proc.StartTimeout)
		}
	}
}

// stop ends the server and waits for it. Stopping it twice does nothing.
func (e *etcdServer) stop() {
	select {
	case <-e.done:
		return
	default:
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(proc.StopTimeout):
		_ = e.cmd.Process.Kill()
		<-e.done
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestLedgerConformanceOnEtcd34 ensures that the etcd backend, built with
// the 3.7 client taglock ships, keeps the whole ledger contract against the
// etcd 3.4 server Debian ships: transactions with compares over key
// ranges, reads at a revision, the default limits of a 3.4 cluster, and
// replicas racing through separate clients.
func TestLedgerConformanceOnEtcd34(t *testing.T) {
	t.Parallel()
	_, endpoint := startEtcd(t)
	var n atomic.Int64
	open := func(t *testing.T, prefix string) storage.Ledger {
		l, err := etcd.Open(context.Background(), etcd.Options{Endpoints: []string{endpoint}, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
	newPrefix := func() string { return fmt.Sprintf("/conformance/%d/", n.Add(1)) }
	ledgertest.RunConformance(t, func(t *testing.T) storage.Ledger { return open(t, newPrefix()) },
		ledgertest.Replicas(func(t *testing.T, count int) []storage.Ledger {
			p := newPrefix()
			out := make([]storage.Ledger, count)
			for i := range out {
				out[i] = open(t, p)
			}
			return out
		}))
}

// TestServeOnEtcd34 is a user moving taglock's ledger onto etcd: export the
// bolt ledger, import it with a config naming etcd, serve on it, and find
// the immutable tag still bound; then etcd goes away, and a push gets 503
// and reaches nothing.
func TestServeOnEtcd34(t *testing.T) {
	t.Parallel()
	bin, crane := proc.Tool(t, "TAGLOCK_BIN"), proc.Tool(t, "CRANE")
	etcdProc, endpoint := startEtcd(t)

	boltTL := startTaglock(t, serveOptions{})
	im := makeImage(t)
	ref := boltTL.Addr + "/team/app:1.0.0"
	mustRun(t, command{bin: crane, args: []string{"push", "--insecure", im.layout, ref}})
	boltTL.Stop(t)

	// The registry's storage stays where it was: only the ledger moves. The
	// immutable tag is then answered from the ledger and the registry both.
	etcdConf := filepath.Join(t.TempDir(), "etcd.yaml")
	data := boltTL.Data
	conf := fmt.Sprintf("data: %s\nledger:\n  backend: etcd\n  endpoints: [%s]\n  prefix: /moved/\n  request_timeout: 2s\nembedded:\n  unsafe_local_storage_for_tests: true\n", data, endpoint)
	if err := os.WriteFile(etcdConf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	export := mustRun(t, command{bin: bin, args: []string{"ledger", "export", "--data", boltTL.Data}})
	imp := exec.Command(bin, "ledger", "import", "-c", etcdConf, "-")
	imp.Stdin = strings.NewReader(export)
	if out, err := imp.CombinedOutput(); err != nil || !strings.Contains(string(out), "imported 1 bindings") {
		t.Fatalf("ledger import into etcd: %v\n%s", err, out)
	}
	if got := mustRun(t, command{bin: bin, args: []string{"ledger", "export", "-c", etcdConf}}); got != export {
		t.Fatalf("the etcd ledger exports differently from the bolt one:\n got  %s\n want %s", got, export)
	}

	tl := startTaglock(t, serveOptions{config: conf, data: data})
	ref = tl.Addr + "/team/app:1.0.0"
	mustRun(t, command{bin: crane, args: []string{"push", "--insecure", im.layout, ref}})
	mustRun(t, command{bin: crane, args: []string{"pull", "--insecure", ref, filepath.Join(t.TempDir(), "pulled.tar")}})
	if out := mustFail(t, command{bin: crane, args: []string{"mutate", "--insecure", "--label", "k=v", "-t", ref, ref}}); !strings.Contains(out, "DENIED: ") || !strings.Contains(out, "is immutable") {
		t.Errorf("moving 1.0.0 with the ledger on etcd: %s", out)
	}
	manifest := mustRun(t, command{bin: crane, args: []string{"manifest", "--insecure", ref}})

	etcdProc.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+tl.Addr+"/v2/team/app/manifests/2.0.0", bytes.NewReader([]byte(manifest)))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("push with etcd gone: %d, want 503", resp.StatusCode)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("push with etcd gone took %s; the ledger's request timeout is 2s", took)
	}
	if resp, err := http.Get("http://" + tl.Addr + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz with etcd gone: %v %v, want 503", resp.StatusCode, err)
	}
	if out, err := run(t, command{bin: crane, args: []string{"digest", "--insecure", tl.Addr + "/team/app:2.0.0"}}); err == nil {
		t.Errorf("the push refused with etcd gone reached the registry: %s", out)
	}
}
