package etcd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/etcd"
	"github.com/taglock/taglock/storage/etcd/etcdtest"
	"github.com/taglock/taglock/storage/ledgertest"
)

// populate fills l as ledgertest.Populate does, plus a binding whose
// manifest is the largest taglock accepts.
func populate(t *testing.T, l storage.Ledger) {
	t.Helper()
	ledgertest.Populate(t, l)
	big := ledgertest.NewBinding("app", "big", "big")
	big.Manifest = bytes.Repeat([]byte("m"), ledgertest.MaxManifest)
	ledgertest.MustPut(t, l, []storage.Binding{big})
}

func TestBackupRestoresWithImport(t *testing.T) {
	// An etcd backup is the ledger's export: imported into an empty prefix
	// it gives back the same ledger.
	t.Parallel()
	ctx := context.Background()
	l := openAt(t, newPrefix(), etcd.Options{})
	populate(t, l)
	var backup bytes.Buffer
	n, err := l.Backup(ctx, &backup)
	if err != nil || n != int64(backup.Len()) {
		t.Fatalf("Backup = %d, %v (%d bytes written)", n, err, backup.Len())
	}
	restored := openAt(t, newPrefix(), etcd.Options{})
	if _, err := restored.Import(ctx, &backup, storage.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, want := ledgertest.MustExport(t, restored), ledgertest.MustExport(t, l); !bytes.Equal(got, want) {
		t.Error("the restored ledger differs")
	}
	if problems, err := restored.Check(ctx); err != nil {
		t.Errorf("Check of the restored ledger: %v %q", err, problems)
	}
}

func TestMovesToBoltAndBackLosslessly(t *testing.T) {
	// A ledger exported from bolt, imported into etcd, exported again and
	// imported into a new bolt file exports byte for byte as it began:
	// bindings, tombstones, 4 MiB manifests, events with their sequence
	// numbers, manifest records, pulls and pending reservations.
	t.Parallel()
	ctx := context.Background()
	src, err := bolt.Open(filepath.Join(t.TempDir(), "src.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	populate(t, src)
	want := ledgertest.MustExport(t, src)

	mid := openAt(t, newPrefix(), etcd.Options{})
	if _, err := mid.Import(ctx, bytes.NewReader(want), storage.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	viaEtcd := ledgertest.MustExport(t, mid)
	if !bytes.Equal(viaEtcd, want) {
		t.Fatalf("etcd export differs from the bolt one it imported")
	}
	dst, err := bolt.Open(filepath.Join(t.TempDir(), "dst.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := dst.Import(ctx, bytes.NewReader(viaEtcd), storage.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := ledgertest.MustExport(t, dst); !bytes.Equal(got, want) {
		t.Fatal("bolt -> etcd -> bolt changed the export")
	}
	// The sequence carries on after the imported events on both.
	for _, l := range []storage.Ledger{mid, dst} {
		if err := l.Append(ctx, storage.Event{Kind: storage.EventRefused, Repo: "app"}); err != nil {
			t.Fatal(err)
		}
		newest, err := l.Recent(ctx, "", 1)
		if err != nil || newest[0].Seq != 5 {
			t.Errorf("first event after the move = %+v, %v; want seq 5", newest, err)
		}
	}
}

func TestCheckFindsDamage(t *testing.T) {
	// Check reports each kind of damage to the key layout: records that do
	// not decode, missing or stray index entries, a broken manifest and a
	// sequence behind its events.
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name   string
		damage func(p string) []clientv3.Op
		want   string
	}{
		{"binding index entry removed", func(p string) []clientv3.Op {
			return []clientv3.Op{clientv3.OpDelete(p+"ref/base\x00"+string(ledgertest.Digest("arm64"))+"\x00multi\x00", clientv3.WithPrefix())}
		}, "lacks its index entry"},
		{"index entry of the binding's generation for a digest it lacks", nil, "does not reference"},
		{"history index entry removed", func(p string) []clientv3.Op {
			return []clientv3.Op{clientv3.OpDelete(p+"evk/refused\x00", clientv3.WithPrefix())}
		}, "lacks its by-kind entry"},
		{"binding not JSON", func(p string) []clientv3.Op {
			return []clientv3.Op{clientv3.OpPut(p+"b/app\x00v1", "{")}
		}, "ledger is corrupt"},
		{"reservation tag entry removed", func(p string) []clientv3.Op {
			return []clientv3.Op{clientv3.OpDelete(p+"rtag/app\x00v3\x00", clientv3.WithPrefix())}
		}, "lacks its tag entry"},
		{"event removed", func(p string) []clientv3.Op {
			return []clientv3.Op{clientv3.OpDelete(p + "ev/\x00\x00\x00\x00\x00\x00\x00\x03")}
		}, "points at missing event 3"},
		{"manifest chunk removed", func(p string) []clientv3.Op {
			return []clientv3.Op{clientv3.OpDelete(p+"chunk/app\x00big\x00", clientv3.WithPrefix())}
		}, "manifest of app:big"},
		{"repository key removed", func(p string) []clientv3.Op {
			return []clientv3.Op{clientv3.OpDelete(p + "repo/base")}
		}, "lacks its repository key"},
		{"sequence behind the events", func(p string) []clientv3.Op {
			return []clientv3.Op{clientv3.OpPut(p+"seq", "2")}
		}, "event sequence is 2 but event 4 exists"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := newPrefix()
			l := openAt(t, p, etcd.Options{})
			populate(t, l)
			if problems, err := l.Check(ctx); err != nil {
				t.Fatalf("Check before the damage: %v %q", err, problems)
			}
			ops := []clientv3.Op(nil)
			if tc.damage != nil {
				ops = tc.damage(p)
			} else {
				// The binding's own generation, read from its record.
				resp, err := sharedClient(t).Get(ctx, p+"b/app\x00v1")
				if err != nil {
					t.Fatal(err)
				}
				gen := strings.Split(strings.Split(string(resp.Kvs[0].Value), `"gen":"`)[1], `"`)[0]
				ops = []clientv3.Op{clientv3.OpPut(p+"ref/app\x00"+string(ledgertest.Digest("arm64"))+"\x00v1\x00"+gen, "")}
			}
			if _, err := sharedClient(t).Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			problems, err := l.Check(ctx)
			if !errors.Is(err, storage.ErrCorrupt) {
				t.Errorf("Check: err = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(strings.Join(problems, "\n"), tc.want) {
				t.Errorf("Check problems %q do not mention %q", problems, tc.want)
			}
		})
	}
}

func TestPrefixesAreSeparateLedgers(t *testing.T) {
	// Ledgers under different prefixes of one cluster share nothing, and
	// a prefix holding another schema version does not open.
	t.Parallel()
	ctx := context.Background()
	a, b := openAt(t, newPrefix(), etcd.Options{}), openAt(t, newPrefix(), etcd.Options{})
	ledgertest.MustPut(t, a, []storage.Binding{ledgertest.NewBinding("r", "v1", "one")})
	if _, err := b.Binding(ctx, "r", "v1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a binding under one prefix shows under another: %v", err)
	}
	if _, err := b.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: ledgertest.Digest("two")}); err != nil {
		t.Errorf("Reserve under another prefix: %v", err)
	}
	p := newPrefix()
	if _, err := sharedClient(t).Put(ctx, p+"meta/version", "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Open(ctx, etcd.Options{Client: sharedClient(t), Prefix: p}); !errors.Is(err, storage.ErrCorrupt) {
		t.Errorf("Open of a version 2 ledger: err = %v, want ErrCorrupt", err)
	}
	if _, err := etcd.Open(ctx, etcd.Options{Client: sharedClient(t), Prefix: "/no-slash"}); err == nil {
		t.Error("Open with a prefix not ending in / succeeded")
	}
	ro := openAt(t, newPrefix(), etcd.Options{ReadOnly: true})
	if err := ro.Put(ctx, []storage.Binding{ledgertest.NewBinding("r", "v1", "one")}, nil); !errors.Is(err, storage.ErrReadOnly) {
		t.Errorf("Put on a read-only ledger: err = %v, want ErrReadOnly", err)
	}
}

func TestLargeWritesSpillHistoryAfterTheBindings(t *testing.T) {
	// A delete by digest that tombstones more tags than one transaction
	// holds events for records every tombstone in its transaction and the
	// remaining events right after it, numbered in order; a push with more
	// manifest records than fit records the rest after it too.
	t.Parallel()
	ctx := context.Background()
	l := openAt(t, newPrefix(), etcd.Options{})
	var bs []storage.Binding
	for i := range 60 {
		b := ledgertest.NewBinding("r", fmt.Sprintf("t%02d", i), "shared")
		b.Mode = policy.Mutable
		bs = append(bs, b)
	}
	ledgertest.MustPut(t, l, bs)
	r := ledgertest.MustReserve(t, l, storage.Reservation{Kind: storage.ReserveDelete, Repo: "r", Digest: ledgertest.Digest("shared")})
	marked, err := l.CommitDelete(ctx, r.ID, storage.Event{User: "ci"})
	if err != nil || len(marked) != 60 {
		t.Fatalf("CommitDelete = %d bindings, %v; want 60", len(marked), err)
	}
	hist, err := l.History(ctx, "r", "", 0)
	if err != nil || len(hist) != 60 {
		t.Fatalf("History = %d events, %v; want 60", len(hist), err)
	}
	for i, e := range hist {
		if e.Seq != uint64(60-i) || e.Kind != storage.EventDeleted {
			t.Fatalf("event %d = %+v, want deleted, seq %d", i, e, 60-i)
		}
	}
	if l.LostEvents() != 0 {
		t.Errorf("LostEvents = %d", l.LostEvents())
	}

	var ms []storage.Manifest
	for i := range 200 {
		ms = append(ms, storage.Manifest{Repo: "r", Digest: ledgertest.Digest(fmt.Sprint("child", i)), Size: 1})
	}
	push := ledgertest.MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"index"}, Digest: ledgertest.Digest("index")})
	if err := l.Commit(ctx, push.ID, []storage.Binding{ledgertest.NewBinding("r", "index", "index")}, nil, ms...); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Manifests(ctx, "r"); err != nil || len(got) != 200 {
		t.Errorf("Manifests = %d, %v; want 200", len(got), err)
	}
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check: %v %q", err, problems)
	}
}

func TestFailsClosedWithoutQuorum(t *testing.T) {
	// With two of three members down the cluster has no quorum: every
	// write and every read fails within the request timeout instead of
	// hanging, so the proxy answers 503 and forwards nothing. When the
	// members return, the same Ledger works again without reopening.
	t.Parallel()
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	const timeout = time.Second
	l, err := etcd.Open(ctx, etcd.Options{Endpoints: c.Endpoints(), Prefix: "/taglock/", RequestTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	bound := ledgertest.NewBinding("r", "v1", "one")
	ledgertest.MustPut(t, l, []storage.Binding{bound})
	pending := ledgertest.MustReserve(t, l, storage.Reservation{Repo: "r", Tags: []string{"v2"}, Digest: ledgertest.Digest("two")})

	c.Member(1).Stop()
	c.Member(2).Stop()
	calls := map[string]func() error{
		"Binding": func() error { _, err := l.Binding(ctx, "r", "v1"); return err },
		"Reserve": func() error {
			_, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"v3"}, Digest: ledgertest.Digest("three")})
			return err
		},
		"Commit": func() error {
			return l.Commit(ctx, pending.ID, []storage.Binding{ledgertest.NewBinding("r", "v2", "two")}, nil)
		},
		"Put":     func() error { return l.Put(ctx, []storage.Binding{ledgertest.NewBinding("r", "v4", "four")}, nil) },
		"Append":  func() error { return l.Append(ctx, storage.Event{Kind: storage.EventRefused, Repo: "r"}) },
		"Release": func() error { return l.Release(ctx, pending.ID) },
		"RecordPulls": func() error {
			return l.RecordPulls(ctx, []storage.Pull{{Repo: "r", Digest: bound.Digest, At: time.Now()}})
		},
		"Bindings": func() error { _, err := l.Bindings(ctx, "r"); return err },
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		took := time.Since(start)
		if err == nil {
			t.Errorf("%s without quorum succeeded", name)
		}
		if took > 3*timeout {
			t.Errorf("%s without quorum took %s, want about the request timeout (%s)", name, took, timeout)
		}
	}

	back := []<-chan error{c.Member(1).StartAsync(), c.Member(2).StartAsync()}
	for _, ch := range back {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := l.Binding(ctx, "r", "v1")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ledger did not recover with quorum back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := l.Commit(ctx, pending.ID, []storage.Binding{ledgertest.NewBinding("r", "v2", "two")}, nil); err != nil {
		t.Errorf("Commit with quorum back: %v", err)
	}
	if _, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"v3"}, Digest: ledgertest.Digest("three")}); err != nil {
		t.Errorf("Reserve with quorum back: %v", err)
	}
	if problems, err := l.Check(ctx); err != nil {
		t.Errorf("Check: %v %q", err, problems)
	}
}

func TestFailsClosedWhileUnreachable(t *testing.T) {
	// With its only member down the ledger answers every call with an
	// error within the request timeout, and works again once the member is
	// back.
	t.Parallel()
	ctx := context.Background()
	c := etcdtest.Start(t, 1)
	l, err := etcd.Open(ctx, etcd.Options{Endpoints: c.Endpoints(), RequestTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c.Member(0).Stop()
	start := time.Now()
	if _, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: ledgertest.Digest("one")}); err == nil {
		t.Error("Reserve with etcd down succeeded")
	}
	if _, err := l.Binding(ctx, "r", "v1"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Binding with etcd down: err = %v, want a failure, not an answer", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("two calls with etcd down took %s", took)
	}
	c.Member(0).Restart(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := l.Reserve(ctx, storage.Reservation{Repo: "r", Tags: []string{"v1"}, Digest: ledgertest.Digest("one")})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Reserve once etcd is back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestWatchOutlivesTheClusterGoingAway(t *testing.T) {
	// A binding watch keeps delivering across its cluster going away and
	// coming back: a binding written after the member restarts arrives on
	// the same channel (after a Reset when the watch had to start again),
	// with nobody watching again.
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := etcdtest.Start(t, 1)
	l, err := etcd.Open(ctx, etcd.Options{Endpoints: c.Endpoints(), RequestTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, err := l.WatchBindings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Member(0).Stop()
	time.Sleep(time.Second)
	c.Member(0).Restart(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := l.Put(ctx, []storage.Binding{ledgertest.NewBinding("r", "after", "x")}, nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Put once etcd is back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	timeout := time.After(15 * time.Second)
	for {
		select {
		case change, ok := <-ch:
			if !ok {
				t.Fatal("the watch ended")
			}
			if change.Repo == "r" && change.Tag == "after" {
				return
			}
		case <-timeout:
			t.Fatal("the binding written after the restart was not delivered")
		}
	}
}
