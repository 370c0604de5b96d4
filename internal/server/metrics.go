package server

import (
	"context"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// meteredLedger is the ledger with each operation the proxy performs (every
// method of proxy.Ledger) timed into taglock_ledger_duration_seconds. It
// embeds the ledger, so every other method of the contract stays reachable,
// untimed.
type meteredLedger struct {
	storage.Ledger
	m *proxy.Metrics
}

var _ proxy.Ledger = meteredLedger{}

// Binding implements proxy.Ledger.
func (l meteredLedger) Binding(ctx context.Context, repo, tag string) (storage.Binding, error) {
	defer l.m.ObserveLedger("binding", time.Now())
	return l.Ledger.Binding(ctx, repo, tag)
}

// Bindings implements proxy.Ledger.
func (l meteredLedger) Bindings(ctx context.Context, repo string) ([]storage.Binding, error) {
	defer l.m.ObserveLedger("bindings", time.Now())
	return l.Ledger.Bindings(ctx, repo)
}

// Repositories implements proxy.Ledger.
func (l meteredLedger) Repositories(ctx context.Context) ([]string, error) {
	defer l.m.ObserveLedger("repositories", time.Now())
	return l.Ledger.Repositories(ctx)
}

// Referencing implements proxy.Ledger.
func (l meteredLedger) Referencing(ctx context.Context, repo string, d digest.Digest) ([]storage.Binding, error) {
	defer l.m.ObserveLedger("referencing", time.Now())
	return l.Ledger.Referencing(ctx, repo, d)
}

// Reserve implements proxy.Ledger.
func (l meteredLedger) Reserve(ctx context.Context, r storage.Reservation) (storage.Reservation, error) {
	defer l.m.ObserveLedger("reserve", time.Now())
	return l.Ledger.Reserve(ctx, r)
}

// Commit implements proxy.Ledger.
func (l meteredLedger) Commit(ctx context.Context, id string, bindings []storage.Binding, events []storage.Event, manifests ...storage.Manifest) error {
	defer l.m.ObserveLedger("commit", time.Now())
	return l.Ledger.Commit(ctx, id, bindings, events, manifests...)
}

// CommitDelete implements proxy.Ledger.
func (l meteredLedger) CommitDelete(ctx context.Context, id string, ev storage.Event) ([]storage.Binding, error) {
	defer l.m.ObserveLedger("commit_delete", time.Now())
	return l.Ledger.CommitDelete(ctx, id, ev)
}

// Release implements proxy.Ledger.
func (l meteredLedger) Release(ctx context.Context, id string) error {
	defer l.m.ObserveLedger("release", time.Now())
	return l.Ledger.Release(ctx, id)
}

// Reservations implements proxy.Ledger.
func (l meteredLedger) Reservations(ctx context.Context) ([]storage.Reservation, error) {
	defer l.m.ObserveLedger("reservations", time.Now())
	return l.Ledger.Reservations(ctx)
}

// Put implements proxy.Ledger.
func (l meteredLedger) Put(ctx context.Context, bindings []storage.Binding, events []storage.Event) error {
	defer l.m.ObserveLedger("put", time.Now())
	return l.Ledger.Put(ctx, bindings, events)
}

// Append implements proxy.Ledger.
func (l meteredLedger) Append(ctx context.Context, events ...storage.Event) error {
	defer l.m.ObserveLedger("append", time.Now())
	return l.Ledger.Append(ctx, events...)
}

// Manifest implements proxy.Ledger.
func (l meteredLedger) Manifest(ctx context.Context, repo string, d digest.Digest) (storage.Manifest, error) {
	defer l.m.ObserveLedger("manifest", time.Now())
	return l.Ledger.Manifest(ctx, repo, d)
}

// PutManifest implements proxy.Ledger.
func (l meteredLedger) PutManifest(ctx context.Context, m storage.Manifest) error {
	defer l.m.ObserveLedger("put_manifest", time.Now())
	return l.Ledger.PutManifest(ctx, m)
}
