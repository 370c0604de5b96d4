package integration

import (
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/proxy"
)

// TestVerifyReportsIncompleteClosure ensures verify reports a bound tag
// that still resolves but no longer pulls, because a layer of its image was
// deleted on the registry around taglock: an immutable finding naming the
// missing layer, which repair cannot fix.
func TestVerifyReportsIncompleteClosure(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Separate)
	img, other := MustImage(t), MustImage(t)
	MustPush(t, e.Addr, "shop/api:1.0", img)
	MustPush(t, e.Addr, "shop/api:2.0", other)
	layer := mustLayers(t, img)[0]
	if resp, body := do(t, http.MethodDelete, "http://"+e.Up.Addr+"/v2/shop/api/blobs/"+layer.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete the layer around taglock: %d %s", resp.StatusCode, body)
	}
	c := admin.NewClient(e.srv.AdminSocket())
	res, err := c.RunVerify(t.Context(), admin.VerifyRequest{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	fs := res.Report.Findings
	if len(fs) != 1 || fs[0].Kind != proxy.DriftIncomplete || fs[0].Tag != "1.0" || !fs[0].Immutable || fs[0].Repairable ||
		!slices.Equal(fs[0].Missing, []digest.Digest{layer}) {
		t.Fatalf("findings = %+v, want one immutable, unrepairable incomplete 1.0 missing %s", fs, layer)
	}
	if !res.Report.ImmutableDrift() || len(res.Repairs) != 1 || res.Repairs[0].Outcome != proxy.RepairSkipped {
		t.Errorf("repairs = %+v, want the finding skipped", res.Repairs)
	}
}

// TestRepairThatMayStillLandIsUnknown ensures verify --repair reports a
// restore the upstream did not answer as unknown, not failed, and that the
// restore, landing later, is recorded: a second verify is clean.
func TestRepairThatMayStillLandIsUnknown(t *testing.T) {
	t.Parallel()
	e := NewEnv(t, Separate, func(c *config.Config) { c.Upstream.Timeout = config.Duration(500 * time.Millisecond) })
	var (
		mu      sync.Mutex
		slowPut = false
	)
	f := e.InjectFaults(t, func(r *http.Request) *Fault {
		mu.Lock()
		defer mu.Unlock()
		if slowPut && manifestPut("shop/api", "1.0")(r) {
			slowPut = false
			return &Fault{Delay: 1500 * time.Millisecond}
		}
		return nil
	})
	e.Start(t)
	img := MustImage(t)
	MustPush(t, e.Addr, "shop/api:1.0", img)
	if resp, body := do(t, http.MethodDelete, "http://"+e.Up.Addr+"/v2/shop/api/manifests/1.0", nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete the tag around taglock: %d %s", resp.StatusCode, body)
	}
	mu.Lock()
	slowPut = true
	mu.Unlock()
	c := admin.NewClient(e.srv.AdminSocket())
	res, err := c.RunVerify(t.Context(), admin.VerifyRequest{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Repairs) != 1 || res.Repairs[0].Outcome != proxy.RepairUnknown {
		t.Fatalf("repairs = %+v, want one with outcome unknown", res.Repairs)
	}
	f.WaitLanded(t, 1, 10*time.Second)
	waitSettled(t, e)
	e.wantServed(t, "shop/api:1.0", MustDigest(t, img))
	after, err := c.RunVerify(t.Context(), admin.VerifyRequest{})
	if err != nil || len(after.Report.Findings) != 0 {
		t.Errorf("verify after the restore landed: %+v, %v; want clean", after.Report.Findings, err)
	}
}
