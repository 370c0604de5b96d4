package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/server"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// ltOffline runs fn on the ledger tools the way the commands do when serve
// is not running: on the ledger file and the upstream directly.
func ltOffline(t *testing.T, e *Env, fn func(l admin.Local)) {
	t.Helper()
	l, err := bolt.Open(server.LedgerPath(e.Data), bolt.Options{LockTimeout: -1})
	if err != nil {
		t.Fatalf("open ledger without serve: %v", err)
	}
	defer l.Close()
	off, err := server.NewOffline(t.Context(), e.cfg, l, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	fn(admin.Local{Ledger: l, Tools: off.Drift()})
}

// ltFindings renders findings as "kind tag recorded actual" for comparison.
func ltFindings(fs []proxy.Finding) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = fmt.Sprintf("%s %s %s %s", f.Kind, f.Tag, f.Recorded, f.Actual)
	}
	return out
}

// TestLedgerToolsAdoptVerifyRepair is the operator's story: a registry
// already holds images; taglock imports them without serving, then serves;
// someone writes around taglock (moves one tag, deletes another, adds a
// third) with a real client; verify through the running server reports
// exactly those three with both digests; repair puts the immutable ones back
// so pulls through taglock get the recorded digests; the history shows the
// refused push and the restores; and after serve stops, verify on the ledger
// directly agrees.
func TestLedgerToolsAdoptVerifyRepair(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := NewEnv(t, Separate)
	one, oneOne, latest := MustImage(t), MustImage(t), MustImage(t)
	MustPush(t, e.Up.Addr, "shop/api:1.0", one)
	MustPush(t, e.Up.Addr, "shop/api:1.1", oneOne)
	MustPush(t, e.Up.Addr, "shop/api:latest", latest)

	// Import before taglock serves: no unprotected window.
	ltOffline(t, e, func(l admin.Local) {
		rep, err := l.RunImport(ctx, admin.ImportRequest{Repositories: []string{"shop/**"}})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Adopted != 3 || rep.Skipped != 0 {
			t.Fatalf("import = %+v, want 3 adopted", rep)
		}
	})

	e.Start(t)
	c := admin.NewClient(e.srv.AdminSocket())
	// The adopted tag is protected at once.
	if err := remote.Write(mustRef(t, e.Addr, "shop/api:1.0"), MustImage(t), ggcrOpts(t)...); err == nil {
		t.Fatal("moving an imported immutable tag through taglock was allowed")
	}
	refusals, err := c.Recent(ctx, storage.EventRefused, 10)
	if err != nil || len(refusals) != 1 || refusals[0].Tag != "1.0" || refusals[0].Previous != MustDigest(t, one) {
		t.Fatalf("refusals = %+v, %v; want the refused move of 1.0 naming its recorded digest", refusals, err)
	}

	// Writes around taglock, straight to the upstream.
	moved, added := MustImage(t), MustImage(t)
	MustPush(t, e.Up.Addr, "shop/api:1.0", moved)
	if err := remote.Delete(mustRef(t, e.Up.Addr, "shop/api:1.1"), ggcrOpts(t)...); err != nil {
		t.Fatalf("delete 1.1 upstream: %v", err)
	}
	MustPush(t, e.Up.Addr, "shop/api:2.0", added)

	res, err := c.RunVerify(ctx, admin.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		fmt.Sprintf("moved 1.0 %s %s", MustDigest(t, one), MustDigest(t, moved)),
		fmt.Sprintf("deleted 1.1 %s ", MustDigest(t, oneOne)),
		fmt.Sprintf("new 2.0  %s", MustDigest(t, added)),
	}
	if got := ltFindings(res.Report.Findings); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("verify found\n %q\nwant\n %q", got, want)
	}
	if !res.Report.ImmutableDrift() {
		t.Error("verify does not flag the immutable drift")
	}

	res, err = c.RunVerify(ctx, admin.VerifyRequest{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.After == nil || res.After.ImmutableDrift() || len(res.After.Findings) != 1 || res.After.Findings[0].Kind != proxy.DriftNew {
		t.Fatalf("after repair: %+v; want only the new tag left", res.After)
	}
	e.wantServed(t, "shop/api:1.0", MustDigest(t, one))
	e.wantServed(t, "shop/api:1.1", MustDigest(t, oneOne))
	e.wantServed(t, "shop/api:latest", MustDigest(t, latest))

	hist, err := c.History(ctx, "shop/api", "1.0", 0)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []storage.EventKind
	for _, ev := range hist {
		kinds = append(kinds, ev.Kind)
	}
	if fmt.Sprint(kinds) != fmt.Sprint([]storage.EventKind{storage.EventRestored, storage.EventRefused, storage.EventAdopted}) {
		t.Errorf("history of 1.0 = %v, want restored, refused, adopted", kinds)
	}

	// Ledger maintenance through the running server.
	if problems, err := c.Check(ctx); err != nil || len(problems) != 0 {
		t.Errorf("check = %v, %v", problems, err)
	}
	var export bytes.Buffer
	if err := c.Export(ctx, &export); err != nil {
		t.Fatal(err)
	}
	copyLedger, err := bolt.Open(filepath.Join(t.TempDir(), "copy.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer copyLedger.Close()
	if _, err := copyLedger.Import(ctx, bytes.NewReader(export.Bytes()), storage.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := copyLedger.Export(ctx, &again); err != nil || !bytes.Equal(again.Bytes(), export.Bytes()) {
		t.Errorf("export of the imported copy differs (%v)", err)
	}
	e.Stop(t)

	// Without serve, the same answers from the ledger file.
	ltOffline(t, e, func(l admin.Local) {
		res, err := l.RunVerify(ctx, admin.VerifyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if got := ltFindings(res.Report.Findings); len(got) != 1 || got[0] != want[2] {
			t.Errorf("verify without serve = %q, want only %q", got, want[2])
		}
		if _, err := l.Binding(ctx, "shop/api", "2.0"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("verify recorded the new tag: %v", err)
		}
	})
}
