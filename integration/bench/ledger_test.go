//go:build bench

package bench

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taglock/taglock/integration/internal/proc"
)

// ledgerPuts is how many manifest PUTs each ledger path takes per
// iteration and concurrency.
const ledgerPuts = 256

// startTaglockLedger runs taglock in front of upstream with the ledger
// section ledger ("" for the default bolt file).
func startTaglockLedger(b testing.TB, name, upstream, ledger string) *process {
	b.Helper()
	dir := b.TempDir()
	cfg := filepath.Join(dir, "taglock.yaml")
	if err := os.WriteFile(cfg, []byte("log: {level: warn}\n"+ledger), 0o600); err != nil {
		b.Fatal(err)
	}
	args := []string{"serve", "--config", cfg, "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "data"), "--upstream", upstream}
	return proc.Start(b, proc.Spec{Name: name, Bin: proc.Tool(b, "TAGLOCK_BIN"), Args: args, Env: proc.Environ(),
		AddrFrom: proc.TaglockAddr, Ready: "/readyz"})
}

// etcdLedger is the ledger section for an etcd cluster.
func etcdLedger(c *proc.EtcdCluster) string {
	return fmt.Sprintf("ledger:\n  backend: etcd\n  endpoints: [%s]\n", strings.Join(c.Endpoints(), ", "))
}

// etcdRPCs sums etcd's gRPC calls handled so far by method (Range, Txn,
// LeaseKeepAlive...) over every member of c, from their /metrics.
func etcdRPCs(b testing.TB, c *proc.EtcdCluster) map[string]float64 {
	b.Helper()
	out := map[string]float64{}
	for _, ep := range c.Endpoints() {
		resp, err := http.Get(ep + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "grpc_server_handled_total{") {
				continue
			}
			_, rest, _ := strings.Cut(line, `grpc_method="`)
			method, _, _ := strings.Cut(rest, `"`)
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				out[method] += v
			}
		}
		resp.Body.Close()
	}
	return out
}

// latencies collects request latencies.
type latencies struct {
	mu sync.Mutex
	ds []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.ds = append(l.ds, d)
	l.mu.Unlock()
}

// quantile returns the q-quantile (0..1) of the latencies, in ms.
func (l *latencies) quantile(q float64) float64 {
	ds := slices.Clone(l.ds)
	slices.Sort(ds)
	if len(ds) == 0 {
		return 0
	}
	i := min(int(q*float64(len(ds))), len(ds)-1)
	return float64(ds[i].Microseconds()) / 1000
}

// BenchmarkLedgerManifestPut measures what agreement costs a push: manifest
// PUTs of new tags directly to the registry and through taglock with its
// ledger in a bolt file, on a one-member etcd cluster and on a three-member
// one (Debian's etcd 3.4 on loopback, its data on this machine's disk), all
// in front of one registry, at 1, 8 and 32 concurrent clients. For each it
// reports requests per second, latency p50 and p99, and, for the etcd
// paths, the etcd requests (gRPC calls: Range, Txn) each push made.
func BenchmarkLedgerManifestPut(b *testing.B) {
	reg := proc.StartRegistry(b, "warn")
	up := "http://" + reg.Addr
	one, three := proc.StartEtcdCluster(b, 1), proc.StartEtcdCluster(b, 3)
	clusters := map[string]*proc.EtcdCluster{"etcd1": one, "etcd3": three}
	targets := []*target{newTarget("direct", reg.Addr)}
	targets[0].proc = reg
	for _, p := range []struct{ name, ledger string }{{"bolt", ""}, {"etcd1", etcdLedger(one)}, {"etcd3", etcdLedger(three)}} {
		tl := startTaglockLedger(b, "taglock ("+p.name+")", up, p.ledger)
		t := newTarget(p.name, tl.Addr)
		t.proc = tl
		targets = append(targets, t)
	}
	ctx := b.Context()
	im := newImage()
	repo := func(t *target) string { return "bench/ledger-" + t.name }
	for _, t := range targets {
		if err := im.push(ctx, t, repo(t)); err != nil {
			b.Fatal(err)
		}
		// Warm up: connections, the repository's first bindings.
		if err := concurrently(32, 8, func(k int) error {
			return t.putManifest(ctx, repo(t), fmt.Sprint("warm-", k), im.manifest(fmt.Sprint(t.name, "-warm-", k)))
		}); err != nil {
			b.Fatal(err)
		}
	}
	for _, clients := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			lat := map[string]*latencies{}
			wall := map[string][]time.Duration{}
			rpcs := map[string]map[string]float64{}
			for _, t := range targets {
				lat[t.name] = &latencies{}
				rpcs[t.name] = map[string]float64{}
			}
			for i := 0; b.Loop(); i++ {
				for _, t := range rotate(targets, i) {
					round := fmt.Sprintf("c%d-r%d", clients, i)
					bodies := make([][]byte, ledgerPuts)
					for k := range bodies {
						bodies[k] = im.manifest(fmt.Sprintf("%s-%s-%d", t.name, round, k))
					}
					var before map[string]float64
					if c := clusters[t.name]; c != nil {
						before = etcdRPCs(b, c)
					}
					start := time.Now()
					err := concurrently(ledgerPuts, clients, func(k int) error {
						t0 := time.Now()
						err := t.putManifest(ctx, repo(t), fmt.Sprintf("%s-%d", round, k), bodies[k])
						lat[t.name].add(time.Since(t0))
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
					wall[t.name] = append(wall[t.name], time.Since(start))
					if c := clusters[t.name]; c != nil {
						for m, v := range etcdRPCs(b, c) {
							rpcs[t.name][m] += v - before[m]
						}
					}
				}
			}
			b.ReportMetric(0, "ns/op")
			var line []string
			for _, t := range targets {
				rs := rates(wall[t.name], ledgerPuts)
				b.ReportMetric(median(rs), t.name+"-req/s")
				b.ReportMetric(lat[t.name].quantile(0.5), t.name+"-p50-ms")
				b.ReportMetric(lat[t.name].quantile(0.99), t.name+"-p99-ms")
				line = append(line, fmt.Sprintf("%s %s req/s p50 %.2f ms p99 %.2f ms", t.name, format(rs, "%.0f"),
					lat[t.name].quantile(0.5), lat[t.name].quantile(0.99)))
				if _, ok := clusters[t.name]; ok {
					pushes := float64(ledgerPuts * len(wall[t.name]))
					b.ReportMetric(rpcs[t.name]["Range"]/pushes, t.name+"-range/req")
					b.ReportMetric(rpcs[t.name]["Txn"]/pushes, t.name+"-txn/req")
					line = append(line, fmt.Sprintf("%s etcd calls per push: %.2f Range, %.2f Txn, %.2f Put", t.name,
						rpcs[t.name]["Range"]/pushes, rpcs[t.name]["Txn"]/pushes, rpcs[t.name]["Put"]/pushes))
				}
			}
			b.Logf("%d clients: %s", clients, strings.Join(line, "; "))
		})
	}
}
