//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/taglock/taglock/integration/internal/proc"
)

// controlEnv, when set to an upstream URL, makes the test binary serve as
// the control proxy instead of running benchmarks.
const controlEnv = "TAGLOCK_BENCH_CONTROL_UPSTREAM"

// TestMain runs the benchmarks, or the control proxy or a profiled taglock
// when the benchmark has started this binary as one.
func TestMain(m *testing.M) {
	if u := os.Getenv(controlEnv); u != "" {
		if err := serveControl(u); err != nil {
			fmt.Fprintln(os.Stderr, "control proxy:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if spec := os.Getenv(asTaglockEnv); spec != "" {
		if err := serveTaglock(spec); err != nil {
			fmt.Fprintln(os.Stderr, "profiled taglock:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serveControl is the control: a bare httputil.ReverseProxy with 256 KiB
// buffers in front of upstream, with the same transport settings as
// taglock's and nothing else. It measures what any Go proxy hop costs, so
// that taglock's figures can be split into that and taglock's own work. It
// logs the line taglock logs when it listens and stops on SIGTERM.
func serveControl(upstream string) error {
	base, err := url.Parse(upstream)
	if err != nil {
		return err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 64
	tr.DisableCompression = true
	tr.ReadBufferSize = 256 << 10
	tr.WriteBufferSize = 256 << 10
	rp := &httputil.ReverseProxy{
		// Keeping the client's Host makes the registry build upload
		// Locations that point back at the proxy.
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(base); pr.Out.Host = pr.In.Host },
		Transport:  tr,
		BufferPool: &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, copyBuffer); return &b }}},
	}
	mux := http.NewServeMux()
	mux.Handle("/v2/", rp)
	mux.HandleFunc("GET /readyz", func(http.ResponseWriter, *http.Request) {})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	line, _ := json.Marshal(map[string]string{"message": "listening", "addr": ln.Addr().String()})
	fmt.Fprintln(os.Stderr, string(line))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// bufferPool hands out the control proxy's copy buffers.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }

// startControl runs this test binary as the control proxy in front of
// upstream.
func startControl(b testing.TB, upstream string) *process {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	return proc.Start(b, proc.Spec{Name: "control proxy", Bin: exe, Args: []string{"-test.run=^$"},
		Env: proc.Environ(controlEnv + "=" + upstream), AddrFrom: proc.TaglockAddr, Ready: "/readyz"})
}
