package ledgertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Populate fills l with a little of everything: bindings (one a tombstone,
// one with an index closure), events of several kinds, manifests, pulls and
// a pending reservation. It returns the record counts written.
func Populate(t testing.TB, l storage.Ledger) storage.ImportStats {
	t.Helper()
	ctx := context.Background()
	v1, v2, idx := NewBinding("app", "v1", "one"), NewBinding("app", "v2", "two"), NewBinding("base", "multi", "index")
	idx.Closure = []digest.Digest{Digest("amd64"), Digest("arm64"), Digest("layer")}
	v2.Deleted, v2.DeletedAt = true, At(30)
	MustPut(t, l, []storage.Binding{v1, v2, idx},
		storage.Event{Kind: storage.EventAdopted, Repo: "app", Tag: "v1", Digest: v1.Digest, Time: At(1), Message: "<found & adopted>"},
		storage.Event{Kind: storage.EventAdopted, Repo: "app", Tag: "v2", Digest: v2.Digest, Time: At(2)},
	)
	if err := l.Append(ctx, storage.Event{
		Kind: storage.EventRefused, Repo: "app", Tag: "v1", Digest: Digest("evil"), Previous: v1.Digest,
		User: "mallory", Rule: "releases", Reason: "immutable-tag-moved", RequestID: "r-9", Time: At(3),
	}); err != nil {
		t.Fatal(err)
	}
	r := MustReserve(t, l, storage.Reservation{Repo: "base", Tags: []string{"next"}, Digest: Digest("next")})
	if err := l.Commit(ctx, r.ID, []storage.Binding{NewBinding("base", "next", "next")},
		[]storage.Event{{Kind: storage.EventAccepted, Repo: "base", Tag: "next", Digest: Digest("next"), Time: At(4)}}); err != nil {
		t.Fatal(err)
	}
	MustReserve(t, l, storage.Reservation{
		Repo: "app", Tags: []string{"v3", "latest"}, Digest: Digest("three"),
		Closure: []digest.Digest{Digest("three/layer")}, Deadline: At(6), Owner: "replica-a",
		Expect: map[string]storage.Seen{"latest": {}},
	})
	MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "app", Digest: Digest("old"), Deadline: At(7)})
	for _, m := range []storage.Manifest{
		{Repo: "base", Digest: Digest("index"), Size: 9, Children: []digest.Digest{Digest("amd64"), Digest("arm64")}},
		{Repo: "base", Digest: Digest("amd64"), Size: 7, Blobs: []digest.Digest{Digest("layer")}, Subject: Digest("x")},
	} {
		if err := l.PutManifest(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.RecordPulls(ctx, []storage.Pull{
		{Repo: "app", Digest: Digest("one"), At: At(10)},
		{Repo: "base", Digest: Digest("index"), At: At(11)},
	}); err != nil {
		t.Fatal(err)
	}
	return storage.ImportStats{Bindings: 4, Events: 4, Manifests: 2, Pulls: 2, Reservations: 2}
}

// MustExport exports l or fails the test.
func MustExport(t testing.TB, l storage.Ledger) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := l.Export(context.Background(), &buf); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return buf.Bytes()
}

func testExportImport(t *testing.T, open Opener) {
	// Export then Import into a fresh ledger reproduces the same export,
	// importing twice changes nothing, and the imported ledger carries on
	// with the same sequence and reservations.
	ctx := context.Background()
	src := open(t)
	want := Populate(t, src)
	dump := MustExport(t, src)
	for _, typ := range []string{"binding", "event", "manifest", "pull", "reservation"} {
		if !bytes.Contains(dump, []byte(`{"type":"`+typ+`",`)) {
			t.Errorf("export has no %s line:\n%s", typ, dump)
		}
	}

	dst := open(t)
	for i := range 2 {
		stats, err := dst.Import(ctx, bytes.NewReader(dump), storage.ImportOptions{})
		if err != nil {
			t.Fatalf("Import #%d: %v", i+1, err)
		}
		equal(t, "ImportStats", stats, want)
		if got := MustExport(t, dst); !bytes.Equal(got, dump) {
			t.Fatalf("export after import #%d differs:\n got  %s\n want %s", i+1, got, dump)
		}
	}
	if problems, err := dst.Check(ctx); err != nil {
		t.Errorf("Check after Import: %v %q", err, problems)
	}
	if err := dst.Append(ctx, storage.Event{Kind: storage.EventRefused, Repo: "app"}); err != nil {
		t.Fatal(err)
	}
	if newest, err := dst.Recent(ctx, "", 1); err != nil || newest[0].Seq != uint64(want.Events)+1 {
		t.Errorf("first event after import = %+v, %v; want seq %d", newest, err, want.Events+1)
	}
	if _, err := dst.Reserve(ctx, storage.Reservation{Repo: "app", Tags: []string{"v3"}, Digest: Digest("other")}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("imported reservation does not hold its tag: err = %v", err)
	}
	if _, err := dst.Reserve(ctx, storage.Reservation{Kind: storage.ReserveDelete, Repo: "app", Digest: Digest("three/layer"), Blob: true}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("imported push reservation does not hold its closure: err = %v", err)
	}
	if _, err := dst.Reserve(ctx, storage.Reservation{Repo: "app", Tags: []string{"v9"}, Digest: Digest("old")}); !errors.Is(err, storage.ErrBusy) {
		t.Errorf("imported delete reservation does not hold its digest: err = %v", err)
	}
}

func testImportRejects(t *testing.T, open Opener) {
	// Import refuses malformed input with ErrInvalid naming the record, and
	// refuses to rewrite history.
	ctx := context.Background()
	l := open(t)
	if err := l.Append(ctx, storage.Event{Kind: storage.EventAccepted, Repo: "r", Time: At(0)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, input string }{
		{"not JSON", "{\"type\":\"binding\"}\nnot json\n"},
		{"unknown type", `{"type":"tag","repo":"r"}`},
		{"unknown field", `{"type":"manifest","repo":"r","digest":"` + string(Digest("m")) + `","extra":1}`},
		{"invalid binding", `{"type":"binding","repo":"r","tag":"t","digest":"sha256:x","mode":"immutable"}`},
		{"event without seq", `{"type":"event","kind":"accepted","repo":"r"}`},
		{"event rewriting history", `{"type":"event","seq":1,"kind":"refused","repo":"r","time":"2026-11-26T12:00:00Z"}`},
	}
	// Each input starts with a valid binding of a new tag, which must not
	// be written when a later record is refused.
	fresh := `{"type":"binding","repo":"r","tag":"fresh","digest":"` + string(Digest("fresh")) + `","size":1,"mode":"mutable","pushedAt":"2026-11-26T12:00:00Z","pushedBy":"ci"}` + "\n"
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := l.Import(ctx, strings.NewReader(fresh+tc.input), storage.ImportOptions{}); !errors.Is(err, storage.ErrInvalid) {
				t.Errorf("Import: err = %v, want ErrInvalid", err)
			}
		})
	}
	if hist, err := l.Recent(ctx, "", 0); err != nil || len(hist) != 1 || hist[0].Kind != storage.EventAccepted {
		t.Errorf("history after refused imports = %+v, %v", hist, err)
	}
	if _, err := l.Binding(ctx, "r", "fresh"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a refused import wrote its valid records: %v", err)
	}
}

// importLines exports l, applies edit to its records (decoded as JSON
// objects) and returns the result as an import stream.
func importLines(t *testing.T, l storage.Ledger, edit func(lines []map[string]any) []map[string]any) []byte {
	t.Helper()
	var lines []map[string]any
	dec := json.NewDecoder(bytes.NewReader(MustExport(t, l)))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, m)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	for _, m := range edit(lines) {
		if err := enc.Encode(m); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

// bindingLine finds the binding record of repo:tag among lines.
func bindingLine(t *testing.T, lines []map[string]any, repo, tag string) map[string]any {
	t.Helper()
	for _, m := range lines {
		if m["type"] == "binding" && m["repo"] == repo && m["tag"] == tag {
			return m
		}
	}
	t.Fatalf("no binding line for %s:%s", repo, tag)
	return nil
}

func testImportContradictions(t *testing.T, open Opener) {
	// An import never changes a binding silently: a record that differs
	// from the recorded binding (another digest, a weaker mode, a revived
	// tombstone, another pusher), a second record of one tag that differs
	// from the first, a push reservation holding an immutable tag for
	// another digest and a delete reservation that would leave it a
	// mutable tombstone are each reported, and without Force nothing at all
	// is written, not even the records that were fine. With Force they
	// are applied and reported as replaced. Identical records and new
	// tags import without Force.
	ctx := context.Background()
	l := open(t)
	Populate(t, l)
	stable := NewBinding("base", "stable", "stable")
	MustPut(t, l, []storage.Binding{stable})
	before := MustExport(t, l)
	v1, next := MustBinding(t, l, "app", "v1"), MustBinding(t, l, "base", "next")
	forged, newTag := Digest("forged"), Digest("new")
	input := importLines(t, l, func(lines []map[string]any) []map[string]any {
		bindingLine(t, lines, "app", "v1")["digest"] = string(forged)
		bindingLine(t, lines, "base", "multi")["mode"] = policy.Mutable
		v2line := bindingLine(t, lines, "app", "v2")
		delete(v2line, "deleted")
		delete(v2line, "deletedAt")
		bindingLine(t, lines, "base", "next")["pushedBy"] = "mallory"
		add := func(tag string, d digest.Digest) {
			lines = append(lines, map[string]any{"type": "binding", "repo": "app", "tag": tag, "digest": string(d),
				"size": 1, "mode": "immutable", "pushedAt": "2026-11-26T12:00:00Z", "pushedBy": "ci"})
		}
		add("v9", newTag)
		add("v9", forged)
		lines = append(lines, map[string]any{"type": "reservation", "id": strings.Repeat("f", 32), "repo": "base",
			"tags": []string{"next"}, "digest": string(forged), "createdAt": "2026-11-26T12:00:00Z"})
		lines = append(lines, map[string]any{"type": "reservation", "id": strings.Repeat("e", 32), "kind": "delete", "repo": "base",
			"tags": []string{"stable"}, "digest": string(stable.Digest), "mode": "mutable", "createdAt": "2026-11-26T12:00:00Z"})
		return lines
	})
	_, err := l.Import(ctx, bytes.NewReader(input), storage.ImportOptions{})
	var ce *storage.ContradictionError
	if !errors.Is(err, storage.ErrContradiction) || !errors.As(err, &ce) {
		t.Fatalf("Import of contradicting records: err = %v, want a *ContradictionError", err)
	}
	got := map[string]string{}
	for _, c := range ce.Contradictions {
		if c.Record <= 0 {
			t.Errorf("contradiction without its record number: %+v", c)
		}
		var fields []string
		for _, ch := range c.Changes {
			fields = append(fields, ch.Field)
		}
		got[c.Repo+":"+c.Tag+" "+strings.Join(fields, ",")] = c.Changes[0].Recorded + " -> " + c.Changes[0].Incoming
	}
	want := map[string]string{
		"app:v1 digest":            string(v1.Digest) + " -> " + string(forged),
		"base:multi mode":          "immutable -> mutable",
		"app:v2 deleted,deletedAt": "true -> false",
		"base:next pushedBy":       "ci -> mallory",
		"app:v9 digest":            string(newTag) + " -> " + string(forged),
		"base:next reservation":    "immutable, bound to " + string(next.Digest) + " -> push reserved for " + string(forged),
		"base:stable reservation":  "immutable, bound to " + string(stable.Digest) + " -> delete leaving a mutable tombstone",
	}
	equal(t, "contradictions", got, want)
	if msg := err.Error(); !strings.Contains(msg, "app:v1: digest "+string(v1.Digest)+" -> "+string(forged)) {
		t.Errorf("error does not say what record would change: %s", msg)
	}
	if after := MustExport(t, l); !bytes.Equal(after, before) {
		t.Fatalf("a refused import changed the ledger:\n got  %s\n want %s", after, before)
	}

	stats, err := l.Import(ctx, bytes.NewReader(input), storage.ImportOptions{Force: true})
	if err != nil {
		t.Fatalf("Import with Force: %v", err)
	}
	if len(stats.Replaced) != len(want) {
		t.Errorf("Replaced = %+v, want the %d contradictions", stats.Replaced, len(want))
	}
	if b := MustBinding(t, l, "app", "v1"); b.Digest != forged {
		t.Errorf("app:v1 after a forced import = %s, want %s", b.Digest, forged)
	}
	if b := MustBinding(t, l, "app", "v2"); b.Deleted {
		t.Errorf("app:v2 after a forced import is still a tombstone")
	}

	// Identical records and a new tag need no Force.
	same := importLines(t, l, func(lines []map[string]any) []map[string]any {
		return append(lines, map[string]any{"type": "binding", "repo": "app", "tag": "v10", "digest": string(newTag),
			"size": 1, "mode": "immutable", "pushedAt": "2026-11-26T12:00:00Z", "pushedBy": "ci"})
	})
	stats, err = l.Import(ctx, bytes.NewReader(same), storage.ImportOptions{})
	if err != nil || len(stats.Replaced) != 0 {
		t.Fatalf("Import of identical records and a new tag = %+v, %v", stats, err)
	}
	if b := MustBinding(t, l, "app", "v10"); b.Digest != newTag {
		t.Errorf("new tag app:v10 = %s, want %s", b.Digest, newTag)
	}
}

func testBackup(t *testing.T, open Opener) {
	// Backup writes a snapshot while the ledger stays in use and reports
	// the bytes it wrote. What the snapshot is, and restoring from it, is
	// each backend's own (see its tests).
	ctx := context.Background()
	l := open(t)
	Populate(t, l)
	var buf bytes.Buffer
	n, err := l.Backup(ctx, &buf)
	if err != nil || n == 0 {
		t.Fatalf("Backup = %d, %v", n, err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("Backup reported %d bytes, wrote %d", n, buf.Len())
	}
	MustPut(t, l, []storage.Binding{NewBinding("app", "after-backup", "after")})
}

func testCheck(t *testing.T, open Opener) {
	// Check finds nothing wrong in a ledger written only through the
	// contract. Each backend's own tests damage its storage and expect
	// Check to say what is wrong.
	ctx := context.Background()
	l := open(t)
	Populate(t, l)
	if problems, err := l.Check(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("Check on good data = %q, %v", problems, err)
	}
}

func testImportManifestsAndDeadlines(t *testing.T, open Opener) {
	// A manifest record decides what deletes and pushes protect, so an
	// import never replaces one silently: a line that says otherwise than
	// the recorded record is a contradiction (applied only with Force),
	// while an identical or new one imports. A reservation whose deadline
	// lies further after its creation than any request takes is refused:
	// it would hold its tags for as long as it says.
	ctx := context.Background()
	l := open(t)
	Populate(t, l)
	amd64 := Digest("amd64")
	lying := importLines(t, l, func(lines []map[string]any) []map[string]any {
		for _, m := range lines {
			if m["type"] == "manifest" && m["repo"] == "base" && m["digest"] == string(amd64) {
				delete(m, "blobs") // "references nothing": its layer would lose its protection
			}
		}
		return append(lines, map[string]any{"type": "manifest", "repo": "base", "digest": string(Digest("fresh")), "size": 3})
	})
	before := MustExport(t, l)
	_, err := l.Import(ctx, bytes.NewReader(lying), storage.ImportOptions{})
	var ce *storage.ContradictionError
	if !errors.As(err, &ce) || len(ce.Contradictions) != 1 || ce.Contradictions[0].Manifest != amd64 || ce.Contradictions[0].Repo != "base" {
		t.Fatalf("Import of a manifest record that drops its blobs: err = %v, want one contradiction for base@%s", err, amd64)
	}
	if !strings.Contains(err.Error(), "base@"+string(amd64)) {
		t.Errorf("error %q does not name base@%s", err, amd64)
	}
	if after := MustExport(t, l); !bytes.Equal(after, before) {
		t.Errorf("a refused import changed the ledger")
	}
	if _, err := l.Import(ctx, bytes.NewReader(lying), storage.ImportOptions{Force: true}); err != nil {
		t.Fatalf("forced import: %v", err)
	}
	if m, err := l.Manifest(ctx, "base", amd64); err != nil || len(m.Blobs) != 0 {
		t.Errorf("after the forced import base@%s = %+v, %v; want it replaced", amd64, m, err)
	}
	if _, err := l.Manifest(ctx, "base", Digest("fresh")); err != nil {
		t.Errorf("a new manifest record was not imported: %v", err)
	}

	far := fmt.Sprintf(`{"type":"reservation","id":%q,"repo":"app","tags":["free"],"digest":%q,"createdAt":"2026-11-26T12:00:00Z","deadline":"2099-01-01T00:00:00Z"}`,
		strings.Repeat("d", 32), Digest("x"))
	if _, err := l.Import(ctx, strings.NewReader(far), storage.ImportOptions{Force: true}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Import of a reservation with a deadline in 2099: err = %v, want ErrInvalid", err)
	}
}
