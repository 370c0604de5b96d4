//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/integration/internal/proc"
)

// haStack is three taglock replicas on one etcd ledger in front of one
// Distribution registry.
type haStack struct {
	t        *testing.T
	etcd     *proc.EtcdCluster
	reg      *process
	config   string // the replicas' YAML, also for the ledger commands
	confFile string
	replicas []*taglock
	upstream []string // each replica's upstream URL
}

// haConfig is the replicas' configuration: short timeouts and lease, so
// that takeovers and settles happen within seconds.
func haConfig(endpoints []string, extra string) string {
	return fmt.Sprintf(`ledger:
  backend: etcd
  endpoints: [%s]
  prefix: /ha/
  request_timeout: 3s
  lease_ttl: 2s
upstream:
  timeout: 3s
  settle_margin: 1s
%s`, strings.Join(endpoints, ", "), extra)
}

// startHA starts a three-member etcd cluster, a registry and three
// replicas; upstream, when it returns a URL for replica i, replaces the
// registry as that replica's upstream (a slow link).
func startHA(t *testing.T, extra string, upstream func(i int, registry string) string) *haStack {
	t.Helper()
	s := &haStack{t: t, etcd: proc.StartEtcdCluster(t, 3), reg: proc.StartRegistry(t, "error")}
	s.config = haConfig(s.etcd.Endpoints(), extra)
	s.confFile = filepath.Join(t.TempDir(), "taglock.yaml")
	if err := os.WriteFile(s.confFile, []byte(s.config), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		up := "http://" + s.reg.Addr
		if upstream != nil {
			if u := upstream(i, s.reg.Addr); u != "" {
				up = u
			}
		}
		s.upstream = append(s.upstream, up)
		s.replicas = append(s.replicas, startTaglock(t, serveOptions{config: s.config, upstream: up}))
	}
	return s
}

// restart starts replica i again on its data directory after a kill.
func (s *haStack) restart(i int) {
	s.replicas[i] = startTaglock(s.t, serveOptions{config: s.config, upstream: s.upstream[i], data: s.replicas[i].Data})
}

// leader returns the index of the replica whose taglock_cluster_leader is
// 1, waiting up to within for exactly one.
func (s *haStack) leader(within time.Duration, skip ...int) int {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		found := -1
		n := 0
		for i, r := range s.replicas {
			if contains(skip, i) {
				continue
			}
			if leads, err := metricIs(r.Addr, "taglock_cluster_leader", "1"); err == nil && leads {
				found = i
				n++
			}
		}
		if n == 1 {
			return found
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%d replicas lead after %s, want exactly one", n, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// metricIs reports whether the /metrics of the taglock at addr has the
// line "name value".
func metricIs(addr, metric, value string) (bool, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return strings.Contains(string(body), "\n"+metric+" "+value+"\n"), err
}

// pendingReservations counts the reservations in the shared ledger, read
// with `taglock ledger export` against etcd.
func (s *haStack) pendingReservations() int {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, proc.Tool(s.t, "TAGLOCK_BIN"), "ledger", "export", "-c", s.confFile, "--data", s.t.TempDir()).Output()
	if err != nil {
		s.t.Fatalf("taglock ledger export: %v", err)
	}
	return strings.Count(string(out), `"type":"reservation"`)
}

// waitNoneReserved waits until nothing is pending in the ledger.
func (s *haStack) waitNoneReserved(within time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for n := s.pendingReservations(); n > 0; n = s.pendingReservations() {
		if time.Now().After(deadline) {
			s.t.Fatalf("%d reservations still pending after %s", n, within)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// boundDigest is the digest the taglock at addr reports for repo:tag
// through its read API, or "" when it has no binding.
func boundDigest(t *testing.T, addr, repo, tag string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/taglock/v1/bindings/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return ""
	}
	var got struct {
		Binding struct {
			Digest string `json:"digest"`
		} `json:"binding"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatalf("bindings API of %s: %d %v", addr, resp.StatusCode, err)
	}
	return got.Binding.Digest
}

// seedImages writes n random images per tag straight to the registry (by
// digest, so no tag), and returns their manifests, digests and media type.
func seedImages(t *testing.T, registry, repo string, tags []string, n int) (map[string][][]byte, map[string][]string, string) {
	t.Helper()
	raws, digests := map[string][][]byte{}, map[string][]string{}
	var mediaType string
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(tags)*n)
	for _, tag := range tags {
		for range n {
			wg.Go(func() {
				img, err := random.Image(128, 1)
				if err != nil {
					errs <- err
					return
				}
				if err := writeByDigest(t, registry, repo, img); err != nil {
					errs <- err
					return
				}
				raw, _ := img.RawManifest()
				d, _ := img.Digest()
				mt, _ := img.MediaType()
				mu.Lock()
				defer mu.Unlock()
				mediaType = string(mt)
				raws[tag] = append(raws[tag], raw)
				digests[tag] = append(digests[tag], d.String())
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("seed the registry: %v", err)
	}
	return raws, digests, mediaType
}

func writeByDigest(t *testing.T, registry, repo string, img v1.Image) error {
	d, _ := img.Digest()
	ref, err := name.ParseReference(registry+"/"+repo+"@"+d.String(), name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(ref, img, remote.WithContext(t.Context()))
}

// putManifest pushes raw to repo:tag through the taglock at addr and
// returns the status and body.
func putManifest(ctx context.Context, client *http.Client, addr, repo, tag, mediaType string, raw []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+addr+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(raw))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// TestReplicasAgreeOnConflictingPushes is several taglock replicas behind
// a load balancer: hundreds of pushes of different content to the same
// immutable tags arrive spread over three replicas at once. Exactly one
// digest wins each tag, every replica then reports that binding and
// refuses other content naming it, the registry holds it, and an
// identical re-push through another replica succeeds.
func TestReplicasAgreeOnConflictingPushes(t *testing.T) {
	t.Parallel()
	s := startHA(t, "", nil)
	const repo = "ha/app"
	var tags []string
	for i := range 24 {
		tags = append(tags, fmt.Sprintf("v%d", i))
	}
	const candidates = 4
	raws, digests, mediaType := seedImages(t, s.reg.Addr, repo, tags, candidates)

	type outcome struct {
		tag, digest string
		replica     int
		status      int
		body        string
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
	)
	client := &http.Client{Timeout: time.Minute}
	sem := make(chan struct{}, 48)
	start := time.Now()
	for _, tag := range tags {
		for c := range candidates {
			for replica := range s.replicas {
				wg.Go(func() {
					sem <- struct{}{}
					defer func() { <-sem }()
					st, body, err := putManifest(t.Context(), client, s.replicas[replica].Addr, repo, tag, mediaType, raws[tag][c])
					if err != nil {
						t.Errorf("push %s:%s through replica %d: %v", repo, tag, replica, err)
						return
					}
					mu.Lock()
					outcomes = append(outcomes, outcome{tag, digests[tag][c], replica, st, body})
					mu.Unlock()
				})
			}
		}
	}
	wg.Wait()
	t.Logf("%d conflicting pushes over 3 replicas in %s", len(outcomes), time.Since(start).Round(time.Millisecond))

	winners := map[string]map[string]bool{}
	statuses := map[int]int{}
	for _, o := range outcomes {
		statuses[o.status]++
		switch o.status {
		case http.StatusCreated:
			if winners[o.tag] == nil {
				winners[o.tag] = map[string]bool{}
			}
			winners[o.tag][o.digest] = true
		case http.StatusForbidden, http.StatusServiceUnavailable:
		default:
			t.Errorf("push of %s to %s through replica %d: %d %s", o.digest, o.tag, o.replica, o.status, o.body)
		}
	}
	t.Logf("answers by status: %v", statuses)
	s.waitNoneReserved(30 * time.Second)
	// On a busy machine a push whose commit timed out after the registry
	// took it is answered 503 and settled afterwards: its tag may have no
	// 201 at all, but it must end bound like every other.
	unanswered := 0
	for _, tag := range tags {
		if len(winners[tag]) > 1 {
			t.Errorf("%s: %d digests were accepted (%v), want at most one", tag, len(winners[tag]), winners[tag])
			continue
		}
		held := resolve(t, s.reg.Addr, repo, tag)
		if len(winners[tag]) == 0 {
			unanswered++
			if !slices.Contains(digests[tag], held) {
				t.Errorf("%s: no push was accepted, and the registry holds %q, none of the candidates", tag, held)
			}
			winners[tag] = map[string]bool{held: true}
		}
		if !winners[tag][held] {
			t.Errorf("%s: the registry holds %s, the push accepted was %v", tag, held, winners[tag])
		}
		for i, r := range s.replicas {
			if got := boundDigest(t, r.Addr, repo, tag); got != held {
				t.Errorf("%s: replica %d reports %q, the registry holds %s", tag, i, got, held)
			}
		}
	}
	if unanswered > 0 {
		t.Logf("%d tags had every push answered 503 (settled afterwards to what the registry took)", unanswered)
	}
	// Everyone refuses other content naming the winner, and takes the
	// winner again.
	for i, tag := range tags[:6] {
		var win, lose []byte
		for c, d := range digests[tag] {
			if winners[tag][d] {
				win = raws[tag][c]
			} else {
				lose = raws[tag][c]
			}
		}
		r := s.replicas[i%3]
		if st, body, _ := putManifest(t.Context(), client, r.Addr, repo, tag, mediaType, lose); st != http.StatusForbidden || !strings.Contains(body, boundDigest(t, r.Addr, repo, tag)) {
			t.Errorf("other content to %s through replica %d: %d %s, want 403 naming the winner", tag, i%3, st, body)
		}
		if st, body, _ := putManifest(t.Context(), client, s.replicas[(i+1)%3].Addr, repo, tag, mediaType, win); st != http.StatusCreated {
			t.Errorf("identical re-push of %s through replica %d: %d %s", tag, (i+1)%3, st, body)
		}
	}
}

// TestReplicaKilledMidPushIsSettledByAnother: a replica is SIGKILLed while
// a manifest PUT it forwarded is still on its way to the registry (a slow
// link holds it). Other content for the tag is not accepted meanwhile;
// once the PUT lands and the dead replica's lease has expired, a live
// replica settles its reservation: the binding is the digest the registry
// holds, on every replica, and nothing stays pending.
func TestReplicaKilledMidPushIsSettledByAnother(t *testing.T) {
	t.Parallel()
	const repo, tag = "ha/crash", "t1"
	var link *slowLink
	s := startHA(t, "", func(i int, registry string) string {
		if i != 2 {
			return ""
		}
		link = startSlowLink(t, registry, "/v2/"+repo+"/manifests/"+tag, 4*time.Second)
		return "http://" + link.Addr
	})
	raws, digests, mediaType := seedImages(t, s.reg.Addr, repo, []string{tag}, 2)
	a, b := raws[tag][0], raws[tag][1]
	dA := digests[tag][0]

	go func() {
		_, _, _ = putManifest(context.Background(), http.DefaultClient, s.replicas[2].Addr, repo, tag, mediaType, a)
	}()
	select {
	case <-link.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the push of A never reached the slow link")
	}
	killed := time.Now()
	s.replicas[2].Kill(t)

	select {
	case <-link.landed:
		t.Log("A landed before B was sent")
	default:
	}
	if st, body, _ := putManifest(t.Context(), http.DefaultClient, s.replicas[0].Addr, repo, tag, mediaType, b); st == http.StatusCreated {
		t.Fatalf("B accepted through another replica while A, from the killed one, may still land: %s", body)
	}
	<-link.landed
	deadline := time.Now().Add(30 * time.Second)
	for boundDigest(t, s.replicas[0].Addr, repo, tag) != dA {
		if time.Now().After(deadline) {
			t.Fatalf("the killed replica's push of A was not settled within 30s; binding %q", boundDigest(t, s.replicas[0].Addr, repo, tag))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("settled by a live replica %s after the kill (the PUT landed after 4s; lease TTL 2s)", time.Since(killed).Round(10*time.Millisecond))
	s.waitNoneReserved(15 * time.Second)
	if got := resolve(t, s.reg.Addr, repo, tag); got != dA {
		t.Errorf("the registry holds %s, want A %s", got, dA)
	}
	for i := range 2 {
		if got := boundDigest(t, s.replicas[i].Addr, repo, tag); got != dA {
			t.Errorf("replica %d binds %s, want A %s", i, got, dA)
		}
	}
	if st, body, _ := putManifest(t.Context(), http.DefaultClient, s.replicas[1].Addr, repo, tag, mediaType, b); st != http.StatusForbidden || !strings.Contains(body, dA) {
		t.Errorf("B after the settle: %d %s, want 403 naming A", st, body)
	}
}

// TestJobsMoveWhenTheirReplicaIsKilled: the scheduled jobs run on one
// replica; SIGKILL it, and another takes them over within the lease TTL
// (2s here) and a little, and runs the scheduled verify.
func TestJobsMoveWhenTheirReplicaIsKilled(t *testing.T) {
	t.Parallel()
	s := startHA(t, "verify:\n  schedule: 1s\n", nil)
	first := s.leader(10 * time.Second)
	for i, r := range s.replicas {
		if i != first && strings.Contains(r.Output(), "scheduled verify") {
			t.Errorf("replica %d, which does not lead, ran a scheduled verify", i)
		}
	}
	s.replicas[first].Kill(t)
	killed := time.Now()
	next := s.leader(15*time.Second, first)
	took := time.Since(killed)
	t.Logf("replica %d took the jobs over %s after replica %d was killed (lease TTL 2s)", next, took.Round(10*time.Millisecond), first)
	if took > 6*time.Second {
		t.Errorf("takeover took %s, want within the 2s lease TTL and a little", took)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.replicas[next].Output(), "scheduled verify") {
		if time.Now().After(deadline) {
			t.Fatalf("the new leader ran no scheduled verify:\n%s", s.replicas[next].Tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestQuorumLossFailsClosedAndRecovers: with one etcd member of three
// stopped, pushes through every replica carry on. With a second stopped,
// quorum is gone: pushes get 503 with an OCI error body and nothing
// reaches the registry, /readyz fails so a load balancer drains the
// replicas, and pulls keep working. With both members back, pushes resume
// through the same processes.
func TestQuorumLossFailsClosedAndRecovers(t *testing.T) {
	t.Parallel()
	s := startHA(t, "", nil)
	const repo = "ha/quorum"
	var tags []string
	for i := range 12 {
		tags = append(tags, fmt.Sprintf("q%d", i))
	}
	raws, _, mediaType := seedImages(t, s.reg.Addr, repo, tags, 1)
	client := &http.Client{Timeout: 30 * time.Second}
	push := func(replica int, tag string) (int, string) {
		st, body, err := putManifest(t.Context(), client, s.replicas[replica].Addr, repo, tag, mediaType, raws[tag][0])
		if err != nil {
			t.Fatal(err)
		}
		return st, body
	}
	if st, body := push(0, "q0"); st != http.StatusCreated {
		t.Fatalf("push with a full cluster: %d %s", st, body)
	}

	began := time.Now()
	s.etcd.Stop(0)
	for i := range 3 {
		if st, body := push(i, tags[1+i]); st != http.StatusCreated {
			t.Errorf("push through replica %d with one etcd member of three down: %d %s", i, st, body)
		}
	}

	t.Logf("%s: pushes through the 3 replicas with one member down done", time.Since(began).Round(10*time.Millisecond))
	s.etcd.Stop(1)
	t.Logf("%s: second member stopped", time.Since(began).Round(10*time.Millisecond))
	for i := range 3 {
		start := time.Now()
		st, body := push(i, tags[4+i])
		if st != http.StatusServiceUnavailable || !strings.Contains(body, `"code":"UNAVAILABLE"`) {
			t.Errorf("push through replica %d without quorum: %d %s, want 503 UNAVAILABLE", i, st, body)
		}
		t.Logf("push without quorum answered %d in %s", st, time.Since(start).Round(10*time.Millisecond))
		if _, err := lookup(t, s.reg.Addr, repo, tags[4+i]); err == nil {
			t.Errorf("the push refused without quorum reached the registry: %s is there", tags[4+i])
		}
		if resp, err := http.Get("http://" + s.replicas[i].Addr + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("/readyz of replica %d without quorum: %v %v, want 503", i, resp.StatusCode, err)
		} else {
			resp.Body.Close()
		}
		if got, err := lookup(t, s.replicas[i].Addr, repo, "q0"); err != nil || got == "" {
			t.Errorf("pull of q0 through replica %d without quorum: %v", i, err)
		}
	}

	t.Logf("%s: every replica checked without quorum", time.Since(began).Round(10*time.Millisecond))
	restored := time.Now()
	s.etcd.Start(0)
	s.etcd.Start(1)
	for i := range 3 {
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, body := push(i, tags[7+i])
			if st == http.StatusCreated {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("push through replica %d 30s after quorum returned: %d %s", i, st, body)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Logf("pushes resumed on every replica %s after the members were started again", time.Since(restored).Round(10*time.Millisecond))
	for i, r := range s.replicas {
		if resp, err := http.Get("http://" + r.Addr + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("/readyz of replica %d after quorum returned: %v %v", i, resp.StatusCode, err)
		} else {
			resp.Body.Close()
		}
	}
	s.waitNoneReserved(30 * time.Second)
}

// TestCrashLoopOnEtcd is the crash loop with three replicas on the etcd
// ledger: the storm of conflicting and identical pushes goes through all
// three, and each round one replica, chosen at random, is SIGKILLed and
// started again. After every round, once a live replica has settled what
// the dead one left, every binding equals the registry's tag, no
// immutable tag ever moved, and nothing stays pending.
func TestCrashLoopOnEtcd(t *testing.T) {
	t.Parallel()
	kills := max(crashKills(t)/3, 6)
	h := startHA(t, crashRules, nil)
	s := newPushStorm(t, h.reg.Addr, "crash/ha")
	export := []string{"-c", h.confFile, "--data", t.TempDir()}
	rng := rand.New(rand.NewPCG(2, uint64(time.Now().UnixNano())))
	for kill := 1; kill <= kills; kill++ {
		check(t, kill, export, h.reg.Addr, s)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		addrs := []string{h.replicas[0].Addr, h.replicas[1].Addr, h.replicas[2].Addr}
		go func() { s.run(ctx, t, addrs...); close(done) }()
		time.Sleep(time.Duration(50+rng.IntN(600)) * time.Millisecond)
		victim := rng.IntN(3)
		h.replicas[victim].Kill(t)
		cancel()
		<-done
		h.restart(victim)
	}
	check(t, kills+1, export, h.reg.Addr, s)
	t.Logf("%d replica kills survived; %d pushes accepted, %d refused, %d other answers; %d immutable tags bound, none moved",
		kills, s.accepted.Load(), s.refused.Load(), s.others.Load(), len(s.first))
	if s.accepted.Load() == 0 {
		t.Error("no push was ever accepted: the storm never ran")
	}
}
