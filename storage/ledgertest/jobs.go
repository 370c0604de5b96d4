package ledgertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/taglock/taglock/storage"
)

func testJobStates(t *testing.T, open Opener) {
	// Job state is stored, listed by name prefix, replaced and deleted; a
	// batch with one invalid name or value writes nothing; a batch larger
	// than one transaction is written whole; and none of it appears in
	// the ledger's export, nor troubles its Check.
	ctx := context.Background()
	l := open(t)
	if got, err := l.JobStates(ctx, ""); err != nil || len(got) != 0 {
		t.Fatalf("JobStates of a new ledger = %v, %v; want empty", got, err)
	}
	var before bytes.Buffer
	if err := l.Export(ctx, &before); err != nil {
		t.Fatal(err)
	}
	mustPutStates(t, l, map[string][]byte{"retention/journal": []byte(`{"pending":[]}`),
		"retention/seen/a@sha256:1": []byte("t1"), "retention/seen/b@sha256:2": []byte("t2"), "other": {}})
	got, err := l.JobStates(ctx, "retention/seen/")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "JobStates(retention/seen/)", got, map[string][]byte{"retention/seen/a@sha256:1": []byte("t1"), "retention/seen/b@sha256:2": []byte("t2")})
	if all, _ := l.JobStates(ctx, ""); len(all) != 4 || all["other"] == nil || len(all["other"]) != 0 {
		t.Errorf("JobStates(\"\") = %q, want 4 values with other empty", all)
	}

	mustPutStates(t, l, map[string][]byte{"retention/journal": nil, "retention/seen/a@sha256:1": []byte("t3"), "absent": nil})
	got, _ = l.JobStates(ctx, "retention/")
	equal(t, "after replacing and deleting", got, map[string][]byte{"retention/seen/a@sha256:1": []byte("t3"), "retention/seen/b@sha256:2": []byte("t2")})

	for _, bad := range []map[string][]byte{
		{"ok": []byte("x"), "": []byte("x")},
		{"ok": []byte("x"), "nul\x00name": []byte("x")},
		{"ok": []byte("x"), strings.Repeat("n", storage.MaxJobStateName+1): []byte("x")},
		{"ok": []byte("x"), "big": make([]byte, storage.MaxJobStateSize+1)},
	} {
		if err := l.PutJobStates(ctx, bad); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("PutJobStates with an invalid entry: err = %v, want ErrInvalid", err)
		}
	}
	if got, _ := l.JobStates(ctx, "ok"); len(got) != 0 {
		t.Errorf("a refused PutJobStates wrote %q", got)
	}

	many := map[string][]byte{"big": make([]byte, storage.MaxJobStateSize)}
	for i := range 300 {
		many[fmt.Sprintf("many/%03d", i)] = []byte(fmt.Sprint(i))
	}
	mustPutStates(t, l, many)
	if got, _ := l.JobStates(ctx, "many/"); len(got) != 300 || string(got["many/299"]) != "299" {
		t.Errorf("JobStates(many/) has %d values, want 300", len(got))
	}
	if got, _ := l.JobStates(ctx, "big"); len(got["big"]) != storage.MaxJobStateSize {
		t.Errorf("the largest value came back with %d bytes, want %d", len(got["big"]), storage.MaxJobStateSize)
	}

	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check with job state stored: %v %q", err, problems)
	}
	var after bytes.Buffer
	if err := l.Export(ctx, &after); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before.Bytes(), after.Bytes()) {
		t.Errorf("job state appears in the export:\n%s", after.String())
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.JobStates(canceled, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("JobStates with a canceled context: %v", err)
	}
	if err := l.PutJobStates(canceled, map[string][]byte{"x": {}}); !errors.Is(err, context.Canceled) {
		t.Errorf("PutJobStates with a canceled context: %v", err)
	}
}

func mustPutStates(t *testing.T, l storage.Ledger, values map[string][]byte) {
	t.Helper()
	if err := l.PutJobStates(context.Background(), values); err != nil {
		t.Fatalf("PutJobStates: %v", err)
	}
}

// waitChanges reads ch until every repo:tag of want was delivered, or
// fails the test after 10s. Resets are allowed and ignored.
func waitChanges(t *testing.T, ch <-chan storage.BindingChange, want ...string) {
	t.Helper()
	missing := map[string]bool{}
	for _, w := range want {
		missing[w] = true
	}
	timeout := time.After(10 * time.Second)
	for len(missing) > 0 {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatalf("the watch ended with %v not delivered", missing)
			}
			delete(missing, c.Repo+":"+c.Tag)
		case <-timeout:
			t.Fatalf("changes of %v were not delivered within 10s", missing)
		}
	}
}

func testWatchBindings(t *testing.T, open ReplicaOpener) {
	// A watch delivers the repo:tag of every binding written after it
	// started, on any replica, by Put, Commit, CommitDelete and Import,
	// and its channel closes when its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ls := open(t, 2)
	ch, err := ls[0].WatchBindings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		MustPut(t, l, []storage.Binding{NewBinding("w", fmt.Sprintf("put%d", i), "p")})
		b := NewBinding("w", fmt.Sprintf("push%d", i), fmt.Sprintf("push%d", i))
		r := MustReserve(t, l, storage.Reservation{Repo: "w", Tags: []string{b.Tag}, Digest: b.Digest})
		if err := l.Commit(ctx, r.ID, []storage.Binding{b}, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitChanges(t, ch, "w:put0", "w:put1", "w:push0", "w:push1")

	del := MustReserve(t, ls[1], storage.Reservation{Kind: storage.ReserveDelete, Repo: "w", Tags: []string{"push1"}, Digest: Digest("push1"),
		Expect: map[string]storage.Seen{"push1": MustBinding(t, ls[1], "w", "push1").Seen()}})
	if _, err := ls[1].CommitDelete(ctx, del.ID, storage.Event{}); err != nil {
		t.Fatal(err)
	}
	waitChanges(t, ch, "w:push1")

	var dump bytes.Buffer
	if err := ls[0].Export(ctx, &dump); err != nil {
		t.Fatal(err)
	}
	rec := strings.Replace(strings.SplitN(dump.String(), "\n", 2)[0], `"repo":"w"`, `"repo":"imported"`, 1)
	if _, err := ls[1].Import(ctx, strings.NewReader(rec+"\n"), storage.ImportOptions{}); err != nil {
		t.Fatalf("Import: %v", err)
	}
	waitChanges(t, ch, "imported:push0")

	cancel()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("the watch's channel was not closed within 10s of its context ending")
		}
	}
}
