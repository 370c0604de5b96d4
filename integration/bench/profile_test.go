//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/integration/internal/proc"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/server"
)

// profileEnv, when set to a directory, makes the benchmarks profile
// taglock: the taglock in front of the upstream is then this test binary,
// re-executed to run what `taglock serve` runs (internal/server, with the
// same configuration and flags), and it writes a CPU profile of its whole
// life and a heap profile when it stops, to
// <dir>/<benchmark>.taglock.{cpu,heap}.pprof. Read them with
// `go tool pprof -top`. taglock itself serves no profiles: this exists only
// in the benchmarks. The figures of a profiled run are not the ones to
// record (the process is the test binary, and the profiler costs a little).
const profileEnv = "TAGLOCK_BENCH_PROFILE"

// asTaglockEnv makes the test binary serve as a profiled taglock instead of
// running benchmarks; its value is a taglockArgs in JSON.
const asTaglockEnv = "TAGLOCK_BENCH_AS_TAGLOCK"

// taglockArgs is what `taglock serve` takes from its command line, and
// where to write the profiles.
type taglockArgs struct {
	Config, Listen, Data, Upstream string
	Profile                        string // file name without .cpu.pprof or .heap.pprof
}

// startProfiledTaglock is startTaglock's profiled variant, used when
// profileEnv names a directory: it returns nil when it does not.
func startProfiledTaglock(b testing.TB, cfg, data, upstream string) *process {
	b.Helper()
	dir := os.Getenv(profileEnv)
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		b.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	name := strings.NewReplacer("/", "_", "=", "-").Replace(strings.TrimPrefix(b.Name(), "Benchmark"))
	args, err := json.Marshal(taglockArgs{Config: cfg, Listen: "127.0.0.1:0", Data: data, Upstream: upstream,
		Profile: filepath.Join(dir, name+".taglock")})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("profiling taglock into %s/%s.taglock.{cpu,heap}.pprof", dir, name)
	return proc.Start(b, proc.Spec{Name: "taglock (profiled)", Bin: exe, Args: []string{"-test.run=^$"},
		Env: proc.Environ(asTaglockEnv + "=" + string(args)), AddrFrom: proc.TaglockAddr, Ready: "/readyz"})
}

// serveTaglock serves as taglock with the arguments in spec (a
// taglockArgs) until SIGTERM, under the CPU profiler, and then writes a
// heap profile too.
func serveTaglock(spec string) error {
	var a taglockArgs
	if err := json.Unmarshal([]byte(spec), &a); err != nil {
		return err
	}
	cfg, err := config.Load(a.Config)
	if err != nil {
		return err
	}
	cfg.Listen, cfg.Data, cfg.Upstream.URL = a.Listen, a.Data, a.Upstream
	if errs := cfg.Validate(); len(errs) > 0 {
		return fmt.Errorf("invalid settings: %v", errs)
	}
	level, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil {
		return err
	}
	log := zerolog.New(os.Stderr).Level(level).With().Timestamp().Logger()
	cpu, err := os.Create(a.Profile + ".cpu.pprof")
	if err != nil {
		return err
	}
	defer cpu.Close()
	if err := pprof.StartCPUProfile(cpu); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv, err := server.Start(ctx, cfg, log)
	if err != nil {
		pprof.StopCPUProfile()
		return err
	}
	select {
	case <-ctx.Done():
	case err := <-srv.Done():
		pprof.StopCPUProfile()
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	pprof.StopCPUProfile()
	heap, herr := os.Create(a.Profile + ".heap.pprof")
	if herr == nil {
		herr = pprof.Lookup("heap").WriteTo(heap, 0)
		if cerr := heap.Close(); herr == nil {
			herr = cerr
		}
	}
	if err != nil {
		return err
	}
	return herr
}
