package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/storage"
)

// PutManifest implements storage.Ledger.
func (l *Ledger) PutManifest(ctx context.Context, m storage.Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	return l.update(ctx, func(tx *bbolt.Tx) error { return putManifest(tx, m) })
}

// Manifest implements storage.Ledger.
func (l *Ledger) Manifest(ctx context.Context, repo string, d digest.Digest) (storage.Manifest, error) {
	var m storage.Manifest
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		k := key(repo, string(d))
		v := tx.Bucket(bucketManifests).Get(k)
		if v == nil {
			return fmt.Errorf("manifest %s@%s: %w", repo, d, storage.ErrNotFound)
		}
		var err error
		m, err = decodeManifest(k, v)
		return err
	})
	return m, err
}

// Manifests implements storage.Ledger.
func (l *Ledger) Manifests(ctx context.Context, repo string) ([]storage.Manifest, error) {
	var out []storage.Manifest
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		return forPrefix(tx.Bucket(bucketManifests), prefix(repo), func(k, v []byte) (bool, error) {
			m, err := decodeManifest(k, v)
			out = append(out, m)
			return true, err
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RecordPulls implements storage.Ledger in one transaction.
func (l *Ledger) RecordPulls(ctx context.Context, pulls []storage.Pull) error {
	for _, p := range pulls {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	if len(pulls) == 0 {
		return nil
	}
	return l.update(ctx, func(tx *bbolt.Tx) error {
		for _, p := range pulls {
			if err := putPull(tx, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// LastPulls implements storage.Ledger.
func (l *Ledger) LastPulls(ctx context.Context, repo string) (map[digest.Digest]time.Time, error) {
	out := map[digest.Digest]time.Time{}
	err := l.view(ctx, func(tx *bbolt.Tx) error {
		p := prefix(repo)
		return forPrefix(tx.Bucket(bucketPulls), p, func(k, v []byte) (bool, error) {
			at, err := decodePullTime(k, v)
			out[digest.Digest(k[len(p):])] = at
			return true, err
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func putManifest(tx *bbolt.Tx, m storage.Manifest) error {
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode manifest %s@%s: %w", m.Repo, m.Digest, err)
	}
	return tx.Bucket(bucketManifests).Put(key(m.Repo, string(m.Digest)), v)
}

func decodeManifest(k, v []byte) (storage.Manifest, error) {
	var m storage.Manifest
	if err := json.Unmarshal(v, &m); err != nil {
		return storage.Manifest{}, fmt.Errorf("manifest %q: %w: %w", k, storage.ErrCorrupt, err)
	}
	return m, nil
}

// putPull stores p unless a later pull of the same manifest is recorded.
func putPull(tx *bbolt.Tx, p storage.Pull) error {
	b := tx.Bucket(bucketPulls)
	k := key(p.Repo, string(p.Digest))
	if v := b.Get(k); v != nil {
		prev, err := decodePullTime(k, v)
		if err != nil {
			return err
		}
		if !p.At.After(prev) {
			return nil
		}
	}
	return b.Put(k, binary.BigEndian.AppendUint64(nil, uint64(p.At.UnixNano())))
}

func decodePullTime(k, v []byte) (time.Time, error) {
	if len(v) != 8 {
		return time.Time{}, fmt.Errorf("pull %q: value of %d bytes: %w", k, len(v), storage.ErrCorrupt)
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC(), nil
}
