//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/integration/internal/proc"
)

// crashKills is how many times TestCrashLoop kills taglock; TAGLOCK_CRASH_KILLS
// raises it for a longer run.
func crashKills(t *testing.T) int {
	if s := os.Getenv("TAGLOCK_CRASH_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("TAGLOCK_CRASH_KILLS=%q: want a positive number", s)
		}
		return n
	}
	return 22
}

// ledgerDump is what `taglock ledger export` shows of bindings and pending
// reservations.
type ledgerDump struct {
	bindings     map[string]string // tag -> digest, live bindings of the storm's repository
	modes        map[string]string // tag -> recorded mode
	reservations int
}

// exportLedger runs `taglock ledger export` with args (--data DIR: the
// admin socket while serve runs; -c CONFIG for an etcd ledger) and reads
// the lines of repo.
func exportLedger(t *testing.T, args []string, repo string) ledgerDump {
	t.Helper()
	// Not through run: the export is long and would flood the log.
	ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
	defer cancel()
	outb, err := exec.CommandContext(ctx, proc.Tool(t, "TAGLOCK_BIN"), append([]string{"ledger", "export"}, args...)...).Output()
	if err != nil {
		t.Fatalf("taglock ledger export %v: %v", args, err)
	}
	out := string(outb)
	d := ledgerDump{bindings: map[string]string{}, modes: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var line struct {
			Type    string `json:"type"`
			Repo    string `json:"repo"`
			Tag     string `json:"tag"`
			Digest  string `json:"digest"`
			Mode    string `json:"mode"`
			Deleted bool   `json:"deleted"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		switch {
		case line.Type == "reservation":
			d.reservations++
		case line.Type == "binding" && line.Repo == repo && !line.Deleted:
			d.bindings[line.Tag], d.modes[line.Tag] = line.Digest, line.Mode
		}
	}
	return d
}

// pushStorm is a storm of conflicting and identical pushes to a few tags
// of one repository: immutable v1-v4 and mutable m1, m2, three candidate
// images each, their blobs already on the registry. It remembers the
// digest a client was first told each immutable tag took.
type pushStorm struct {
	repo      string
	tags      []string
	raws      map[string][][]byte
	mediaType string
	client    *http.Client

	// first[tag] is the digest a client was first told an immutable tag
	// took (201); it must never change.
	mu                        sync.Mutex
	first                     map[string]string
	accepted, refused, others atomic.Int64
}

// crashConfig is the config of the crash loops: short timeouts so that
// in-doubt pushes settle within seconds, and mutable m* tags.
const crashConfig = "upstream:\n  timeout: 2s\n  settle_margin: 1s\n" + crashRules

// crashRules makes the m* tags of the crash loops mutable.
const crashRules = "immutability:\n  rules:\n    - tags: [\"m*\"]\n      mode: mutable\n"

func newPushStorm(t *testing.T, registry, repo string) *pushStorm {
	t.Helper()
	s := &pushStorm{repo: repo, tags: []string{"v1", "v2", "v3", "v4", "m1", "m2"}, raws: map[string][][]byte{}, first: map[string]string{},
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	for _, tag := range s.tags {
		for range 3 {
			img, err := random.Image(128, 1)
			if err != nil {
				t.Fatal(err)
			}
			d, _ := img.Digest()
			ref, _ := name.ParseReference(registry+"/"+repo+"@"+d.String(), name.Insecure)
			if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
				t.Fatalf("seed the registry: %v", err)
			}
			raw, _ := img.RawManifest()
			mt, _ := img.MediaType()
			s.mediaType = string(mt)
			s.raws[tag] = append(s.raws[tag], raw)
		}
	}
	return s
}

// run pushes from 8 workers, each push through a random one of addrs,
// until ctx ends.
func (s *pushStorm) run(ctx context.Context, t *testing.T, addrs ...string) {
	digestOf := func(raw []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(raw)) }
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil {
				tag := s.tags[rng.IntN(len(s.tags))]
				raw := s.raws[tag][rng.IntN(3)]
				addr := addrs[rng.IntN(len(addrs))]
				req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+addr+"/v2/"+s.repo+"/manifests/"+tag, bytes.NewReader(raw))
				req.Header.Set("Content-Type", s.mediaType)
				resp, err := s.client.Do(req)
				if err != nil {
					continue
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusCreated:
					s.accepted.Add(1)
					if !strings.HasPrefix(tag, "m") {
						s.mu.Lock()
						d := digestOf(raw)
						if f, ok := s.first[tag]; !ok {
							s.first[tag] = d
						} else if f != d {
							t.Errorf("immutable %s:%s accepted %s after it had accepted %s", s.repo, tag, d, f)
						}
						s.mu.Unlock()
					}
				case http.StatusForbidden:
					s.refused.Add(1)
				default:
					s.others.Add(1)
				}
			}
		})
	}
	wg.Wait()
}

// TestCrashLoop runs the built binary under a storm of conflicting and
// identical pushes to a few tags and SIGKILLs it at random moments, again
// and again. After every restart, once the outcomes are settled, every
// binding equals the registry's tag, no immutable tag ever moved (each keeps
// the first digest any client was told it accepted), and nothing stays
// pending.
func TestCrashLoop(t *testing.T) {
	t.Parallel()
	kills := crashKills(t)
	reg := proc.StartRegistry(t, "error")
	data := t.TempDir()
	s := newPushStorm(t, reg.Addr, "crash/app")
	export := []string{"--data", data}

	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	for kill := 1; kill <= kills; kill++ {
		tl := startTaglock(t, serveOptions{upstream: "http://" + reg.Addr, data: data, config: crashConfig})
		check(t, kill, export, reg.Addr, s)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { s.run(ctx, t, tl.Addr); close(done) }()
		time.Sleep(time.Duration(50+rng.IntN(600)) * time.Millisecond)
		tl.Kill(t)
		cancel()
		<-done
	}
	startTaglock(t, serveOptions{upstream: "http://" + reg.Addr, data: data, config: crashConfig})
	check(t, kills+1, export, reg.Addr, s)
	t.Logf("%d kills survived; %d pushes accepted, %d refused, %d other answers; %d immutable tags bound, none moved",
		kills, s.accepted.Load(), s.refused.Load(), s.others.Load(), len(s.first))
	if s.accepted.Load() == 0 {
		t.Error("no push was ever accepted: the storm never ran")
	}
}

// check waits until every reservation is settled, then compares the
// ledger (read by `taglock ledger export` with export) with the registry
// and with what clients were told.
func check(t *testing.T, round int, export []string, registry string, s *pushStorm) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var d ledgerDump
	for {
		d = exportLedger(t, export, s.repo)
		if d.reservations == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("round %d: %d reservations still pending after 30s", round, d.reservations)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	repo, first := s.repo, s.first
	for _, tag := range s.tags {
		got, err := lookup(t, registry, repo, tag)
		bound, ok := d.bindings[tag]
		switch {
		case err != nil && ok:
			t.Errorf("round %d: the ledger binds %s to %s, the registry does not have it: %v", round, tag, bound, err)
		case err == nil && !ok:
			t.Errorf("round %d: the registry has %s at %s, the ledger binds nothing", round, tag, got)
		case err == nil && got != bound:
			t.Errorf("round %d: %s: the registry has %s, the ledger binds %s", round, tag, got, bound)
		}
		if f, told := first[tag]; told && ok && f != bound {
			t.Errorf("round %d: immutable %s moved from %s (what a client was told, or the ledger showed) to %s", round, tag, f, bound)
		} else if !told && ok && strings.HasPrefix(tag, "v") {
			first[tag] = bound // settled without a client hearing of it; it binds from now on
		}
		if strings.HasPrefix(tag, "v") && ok && d.modes[tag] != "immutable" {
			t.Errorf("round %d: %s recorded %s, want immutable", round, tag, d.modes[tag])
		}
	}
}
