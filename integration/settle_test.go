package integration

import (
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/retention"
	"github.com/taglock/taglock/policy"
)

// The tests in this file cover the paths that run when something is slow,
// crashed or reconfigured: a decision must rest on the tag's effective
// state (committed bindings, reservations in flight, effective mode), never
// on a partial view of it. Each failed before the fix.

// TestTimedOutPushStaysHeldUntilItLands ensures a push whose upstream
// request outlives taglock's timeout keeps its tag held: its client is told
// the outcome is unknown, a push of other content to the tag waits instead
// of winning, and when the first push lands it becomes the binding, so the
// ledger and the registry agree.
func TestTimedOutPushStaysHeldUntilItLands(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := NewEnv(t, m, func(c *config.Config) { c.Upstream.Timeout = config.Duration(500 * time.Millisecond) })
		var once sync.Once
		f := e.InjectFaults(t, func(r *http.Request) *Fault {
			var fault *Fault
			if manifestPut("team/app", "t1")(r) {
				once.Do(func() { fault = &Fault{Delay: 1500 * time.Millisecond} })
			}
			return fault
		})
		e.Start(t)
		a, b := MustImage(t), MustImage(t)
		MustPushByDigest(t, e.Addr, "team/app", a)
		MustPushByDigest(t, e.Addr, "team/app", b)

		resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/t1", MustManifest(t, a))
		if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusBadGateway || !strings.Contains(oe.Message, "not known yet") ||
			strings.Contains(oe.Message, "nothing was changed") {
			t.Errorf("timed-out push: %d %q, want 502 saying the outcome is not known yet", oe.Status, oe.Message)
		}
		// B is sent while A is still on its way: it must not win.
		err := remote.Write(e.Ref(t, "team/app:t1"), b, ggcrOpts(t)...)
		wantDenied(t, ggcrError(t, err), moveRefusal(MustDigest(t, a), MustDigest(t, b)))
		f.WaitLanded(t, 1, 10*time.Second)
		e.wantServed(t, "team/app:t1", MustDigest(t, a))
		if got, err := e.Ledger().Binding(t.Context(), "team/app", "t1"); err != nil || got.Digest != MustDigest(t, a) {
			t.Errorf("binding = %+v, %v; want %s", got, err, MustDigest(t, a))
		}
		waitSettled(t, e)
	})
}

// TestPushThatMayStillLandIsSettling ensures that while an earlier push of
// a tag may still land, other content for the tag gets 503 saying it is
// still settling, and nothing moves; once the earlier push can no longer
// land it is released and the tag is free again.
func TestPushThatMayStillLandIsSettling(t *testing.T) {
	t.Parallel()
	e := NewEnv(t, Separate, func(c *config.Config) {
		c.Upstream.Timeout = config.Duration(300 * time.Millisecond)
		c.Upstream.SettleMargin = config.Duration(2 * time.Second)
	})
	e.ShortenWait(500 * time.Millisecond)
	var once sync.Once
	e.InjectFaults(t, func(r *http.Request) *Fault {
		var fault *Fault
		if manifestPut("team/app", "t1")(r) {
			once.Do(func() { fault = &Fault{Skip: true, Drop: true} }) // lost on the way: never lands
		}
		return fault
	})
	e.Start(t)
	a, b := MustImage(t), MustImage(t)
	MustPushByDigest(t, e.Addr, "team/app", a)
	MustPushByDigest(t, e.Addr, "team/app", b)
	if resp, _ := putManifest(t, e.Addr, "/v2/team/app/manifests/t1", MustManifest(t, a)); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("dropped push: %d, want 502", resp.StatusCode)
	}
	resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/t1", MustManifest(t, b))
	if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusServiceUnavailable || oe.Code != "UNAVAILABLE" ||
		!strings.Contains(oe.Message, "still settling") || !strings.Contains(oe.Message, MustDigest(t, a).String()) ||
		resp.Header.Get("Retry-After") == "" {
		t.Errorf("push of other content while the first may land: %d %s %q, want 503 UNAVAILABLE, still settling, naming the earlier digest, with Retry-After",
			oe.Status, oe.Code, oe.Message)
	}
	if e.served(t, "/v2/team/app/manifests/t1") {
		t.Errorf("the registry has t1")
	}
	// After the margin the first push is released and B binds.
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/t1", MustManifest(t, b))
		if resp.StatusCode == http.StatusCreated {
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("push of B after the margin: %d %s", resp.StatusCode, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.wantServed(t, "team/app:t1", MustDigest(t, b))
}

// TestReconciledPushKeepsImmutableMode ensures that settling a re-push whose
// answer was lost keeps a tag bound while immutable immutable, even after
// the configuration relaxed: a later push of other content is refused.
func TestReconciledPushKeepsImmutableMode(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		img := MustImage(t)
		MustPush(t, e.Addr, "team/app:r1", img)
		e.Stop(t)
		e.cfg.Immutability.Rules = append([]config.ImmutabilityRule{{Tags: []string{"r*"}, Mode: "mutable"}}, e.cfg.Immutability.Rules...)
		var once sync.Once
		e.InjectFaults(t, func(r *http.Request) *Fault {
			var fault *Fault
			if manifestPut("team/app", "r1")(r) {
				once.Do(func() { fault = &Fault{Status: http.StatusInternalServerError} }) // stored, then 500
			}
			return fault
		})
		e.Start(t)
		if resp, _ := putManifest(t, e.Addr, "/v2/team/app/manifests/r1", MustManifest(t, img)); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("re-push: %d, want 502: the registry answered 500, the outcome is not known yet", resp.StatusCode)
		}
		waitSettled(t, e)
		b, err := e.Ledger().Binding(t.Context(), "team/app", "r1")
		if err != nil || b.Mode != policy.Immutable || b.Digest != MustDigest(t, img) {
			t.Errorf("binding after the reconcile = %+v, %v; want %s immutable", b, err, MustDigest(t, img))
		}
		other := MustImage(t)
		err = remote.Write(e.Ref(t, "team/app:r1"), other, ggcrOpts(t)...)
		wantDenied(t, ggcrError(t, err), Denial{Recorded: MustDigest(t, img), Attempted: MustDigest(t, other), Rule: "immutability.default (recorded when first pushed)"})
	})
}

// waitSettled waits until no reservation is pending.
func waitSettled(t *testing.T, e *Env) {
	t.Helper()
	waitSettledWithin(t, e, 15*time.Second)
}

// TestReleasedWarnTagStaysBound ensures a tag recorded in warn mode, then
// governed by an immutable rule and released by retention, stays bound by
// its tombstone: the README's promise holds whatever mode the tag was
// first recorded in.
func TestReleasedWarnTagStaysBound(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, func(c *config.Config) { c.Immutability.Default = "warn"; c.Immutability.Rules = nil })
		old, newer := MustImage(t), MustImage(t)
		MustPush(t, e.Addr, "team/app:1.0", old)
		MustPush(t, e.Addr, "team/app:2.0", newer)
		e.Stop(t)
		e.cfg.Immutability.Default = "immutable"
		e.cfg.Retention.Policies = []config.RetentionPolicy{{Repositories: []string{"team/**"},
			Keep:      []config.KeepRule{{MostRecent: 1}},
			Immutable: config.ImmutableRetention{ReleaseAfter: config.Duration(time.Millisecond)}}}
		e.Start(t)
		// Under the immutable rule, moving 1.0 is refused before the release.
		err := remote.Write(e.Ref(t, "team/app:1.0"), MustImage(t), ggcrOpts(t)...)
		if oe := ggcrError(t, err); oe.Code != "DENIED" {
			t.Fatalf("move of 1.0 before the release: %v, want DENIED", err)
		}
		c := admin.NewClient(e.srv.AdminSocket())
		res, err := c.RetentionApply(t.Context())
		if err != nil {
			t.Fatalf("retention apply: %v", err)
		}
		released := false
		for _, d := range res.Deletions {
			released = released || d.Tag == "1.0" && d.Released && d.Outcome == retention.OutcomeDeleted
		}
		if !released {
			t.Fatalf("retention did not release 1.0: %+v", res.Deletions)
		}
		b, err := e.Ledger().Binding(t.Context(), "team/app", "1.0")
		if err != nil || !b.Deleted || b.Mode != policy.Immutable {
			t.Errorf("1.0 after the release = %+v, %v; want an immutable tombstone", b, err)
		}
		other := MustImage(t)
		err = remote.Write(e.Ref(t, "team/app:1.0"), other, ggcrOpts(t)...)
		wantDenied(t, ggcrError(t, err), Denial{Recorded: MustDigest(t, old), Attempted: MustDigest(t, other), Rule: "immutability.default"})
	})
}

// TestRetentionSparesContentOfAPushInFlight ensures retention never deletes
// a manifest a push in flight is binding a tag to: the push, slow to land,
// reserved the manifest, so retention's delete of it waits and is skipped,
// and the push lands whole.
func TestRetentionSparesContentOfAPushInFlight(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := NewEnv(t, m, func(c *config.Config) {
			c.Immutability.Rules = []config.ImmutabilityRule{{Tags: []string{"old", "new"}, Mode: "mutable"}}
			c.Retention.Policies = []config.RetentionPolicy{{Repositories: []string{"team/**"},
				Keep: []config.KeepRule{{MostRecent: 1}}, Untagged: "delete"}}
		})
		e.ShortenWait(time.Second)
		hold := make(chan struct{})
		arrived := make(chan struct{})
		var once sync.Once
		e.InjectFaults(t, func(r *http.Request) *Fault {
			var fault *Fault
			if manifestPut("team/app", "v9")(r) {
				once.Do(func() { fault = &Fault{Hold: hold}; close(arrived) })
			}
			return fault
		})
		e.Start(t)
		old, newer := MustImage(t), MustImage(t)
		MustPush(t, e.Addr, "team/app:old", old)
		MustPush(t, e.Addr, "team/app:new", newer)

		pushed := make(chan int, 1)
		go func() {
			resp, _ := putManifest(t, e.Addr, "/v2/team/app/manifests/v9", MustManifest(t, old))
			pushed <- resp.StatusCode
		}()
		<-arrived
		// In embedded mode garbage collection waits for the push to
		// finish; let it land a little after the deletes were tried.
		go func() { time.Sleep(3 * time.Second); close(hold) }()
		c := admin.NewClient(e.srv.AdminSocket())
		res, err := c.RetentionApply(t.Context())
		if err != nil {
			t.Fatalf("retention apply: %v", err)
		}
		for _, d := range res.Deletions {
			if d.Digest == MustDigest(t, old) && d.Tag == "" && d.Outcome != retention.OutcomeSkipped {
				t.Errorf("retention's delete of the manifest being pushed: %s (%s), want skipped", d.Outcome, d.Error)
			}
		}
		if st := <-pushed; st != http.StatusCreated {
			t.Fatalf("push of v9: %d, want 201", st)
		}
		e.wantServed(t, "team/app:v9", MustDigest(t, old))
		if _, err := remote.Image(e.Ref(t, "team/app:v9"), ggcrOpts(t)...); err != nil {
			t.Errorf("v9 does not pull: %v", err)
		}
		for _, l := range mustLayers(t, old) {
			if !e.served(t, "/v2/team/app/blobs/"+l.String()) {
				t.Errorf("v9's layer %s is gone", l)
			}
		}
		vr, err := c.RunVerify(t.Context(), admin.VerifyRequest{})
		if err != nil || vr.Report.ImmutableDrift() {
			t.Errorf("verify after the run: %+v, %v; want no immutable drift", vr.Report.Findings, err)
		}
	})
}

// TestSettlingWithClientCredentials ensures that in front of a registry
// that checks the client's own credentials (passthrough), an unknown
// outcome is settled with them, and that once the request can no longer
// land the hold ends when promised even if the registry never shows the
// outcome to taglock: a tag is never held for ever.
func TestSettlingWithClientCredentials(t *testing.T) {
	t.Parallel()
	up := mustBasicUpstream(t, mustHtpasswd(t, map[string]string{"ci": "ci-secret"}))
	e := &Env{Mode: Separate, Data: t.TempDir()}
	e.cfg = config.Default()
	e.cfg.Listen, e.cfg.Data = "127.0.0.1:0", e.Data
	e.cfg.Upstream.URL = "http://" + up
	e.cfg.Upstream.Timeout = config.Duration(500 * time.Millisecond)
	e.cfg.Upstream.SettleMargin = config.Duration(time.Second)
	var once sync.Once
	e.InjectFaults(t, func(r *http.Request) *Fault {
		var fault *Fault
		if manifestPut("team/app", "latest")(r) {
			once.Do(func() { fault = &Fault{Skip: true, Status: http.StatusInternalServerError} })
		}
		return fault
	})
	e.Start(t)
	ci := append(ggcrOpts(t), remote.WithAuth(basicAuth("ci", "ci-secret")))
	a, b := MustImage(t), MustImage(t)
	for _, img := range []v1.Image{a, b} {
		if err := remote.Write(e.Ref(t, "team/app@"+MustDigest(t, img).String()), img, ci...); err != nil {
			t.Fatal(err)
		}
	}
	login := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("ci:ci-secret"))}}
	put := func(m Manifest) (*http.Response, []byte) {
		h := login.Clone()
		h.Set("Content-Type", m.MediaType)
		return do(t, http.MethodPut, e.URL("/v2/team/app/manifests/latest"), m.Raw, h)
	}
	if resp, body := put(MustManifest(t, a)); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("push answered 500 by the registry: %d %s, want 502", resp.StatusCode, body)
	}
	start := time.Now()
	for {
		resp, body := put(MustManifest(t, b))
		if resp.StatusCode == http.StatusCreated {
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Since(start) > 20*time.Second {
			t.Fatalf("push of other content %s after the unknown outcome: %d %s", time.Since(start).Round(time.Millisecond), resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitSettled(t, e)
}
