package etcd

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/taglock/taglock/storage"
)

// PutManifest implements storage.Ledger.
func (l *Ledger) PutManifest(ctx context.Context, m storage.Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode manifest %s@%s: %w", m.Repo, m.Digest, err)
	}
	_, err = l.kv.Put(ctx, l.k.manifest(m.Repo, string(m.Digest)), string(v))
	return err
}

// Manifest implements storage.Ledger.
func (l *Ledger) Manifest(ctx context.Context, repo string, d digest.Digest) (storage.Manifest, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return storage.Manifest{}, err
	}
	defer cancel()
	resp, err := l.kv.Get(ctx, l.k.manifest(repo, string(d)))
	if err != nil {
		return storage.Manifest{}, err
	}
	if len(resp.Kvs) == 0 {
		return storage.Manifest{}, fmt.Errorf("manifest %s@%s: %w", repo, d, storage.ErrNotFound)
	}
	return decodeManifest(resp.Kvs[0])
}

// Manifests implements storage.Ledger.
func (l *Ledger) Manifests(ctx context.Context, repo string) ([]storage.Manifest, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var out []storage.Manifest
	p := l.k.prefix("mf", repo)
	_, err = l.scan(ctx, p, end(p), 0, false, func(kv *mvccpb.KeyValue) error {
		m, err := decodeManifest(kv)
		out = append(out, m)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func decodeManifest(kv *mvccpb.KeyValue) (storage.Manifest, error) {
	var m storage.Manifest
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		return storage.Manifest{}, fmt.Errorf("manifest %q: %w: %w", kv.Key, storage.ErrCorrupt, err)
	}
	return m, nil
}

// pullsPerTxn is how many pulls one transaction records: each needs a
// compare.
const pullsPerTxn = 100

// RecordPulls implements storage.Ledger. It keeps the latest time of each
// manifest of the batch first, then writes at most pullsPerTxn manifests
// per transaction: it reads their recorded times and writes the later ones,
// comparing each key's revision with the one read, so a later time another
// replica wrote meanwhile is never moved back.
func (l *Ledger) RecordPulls(ctx context.Context, pulls []storage.Pull) error {
	for _, p := range pulls {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	if len(pulls) == 0 {
		return nil
	}
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	latest := map[string]time.Time{}
	var order []string
	for _, p := range pulls {
		k := l.k.pull(p.Repo, string(p.Digest))
		if at, ok := latest[k]; !ok || p.At.After(at) {
			if !ok {
				order = append(order, k)
			}
			latest[k] = p.At
		}
	}
	for start := 0; start < len(order); start += pullsPerTxn {
		batch := order[start:min(start+pullsPerTxn, len(order))]
		if err := l.recordPulls(ctx, batch, latest); err != nil {
			return err
		}
	}
	return nil
}

// recordPulls writes the pull times of keys that are later than the
// recorded ones, comparing what it read.
func (l *Ledger) recordPulls(ctx context.Context, keys []string, latest map[string]time.Time) error {
	return retry(ctx, func() (bool, error) {
		gets := make([]get, len(keys))
		for i, k := range keys {
			gets[i] = get{key: k}
		}
		got, _, err := l.read(ctx, 0, gets)
		if err != nil {
			return false, err
		}
		var t txn
		for i, k := range keys {
			v := pullValue(latest[k])
			if len(got[i]) == 0 {
				t.cmp(k, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			} else if string(got[i][0].Value) >= v {
				continue
			} else {
				t.cmp(k, clientv3.Compare(clientv3.ModRevision(k), "=", got[i][0].ModRevision))
			}
			t.put(k, v)
		}
		if len(t.ops) == 0 {
			return true, nil
		}
		resp, err := t.commit(ctx, l.kv)
		if err != nil {
			return false, err
		}
		return resp.Succeeded, nil
	})
}

// LastPulls implements storage.Ledger.
func (l *Ledger) LastPulls(ctx context.Context, repo string) (map[digest.Digest]time.Time, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	out := map[digest.Digest]time.Time{}
	p := l.k.prefix("pull", repo)
	_, err = l.scan(ctx, p, end(p), 0, false, func(kv *mvccpb.KeyValue) error {
		at, err := decodePullTime(kv)
		out[digest.Digest(kv.Key[len(p):])] = at
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// pullValue encodes a pull time: big-endian Unix nanoseconds, which sort
// bytewise in time order (pull times are never before 1970).
func pullValue(at time.Time) string {
	return string(binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano())))
}

func decodePullTime(kv *mvccpb.KeyValue) (time.Time, error) {
	if len(kv.Value) != 8 {
		return time.Time{}, fmt.Errorf("pull %q: value of %d bytes: %w", kv.Key, len(kv.Value), storage.ErrCorrupt)
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(kv.Value))).UTC(), nil
}
