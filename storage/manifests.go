package storage

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// PutManifest records (or replaces) what manifest m.Digest of m.Repo
// references.
func (l *Ledger) PutManifest(ctx context.Context, m Manifest) error {
	if err := checkManifest(m); err != nil {
		return err
	}
	return l.update(ctx, func(tx *bolt.Tx) error { return putManifest(tx, m) })
}

// Manifest returns the record of manifest d in repo, or an error wrapping
// ErrNotFound.
func (l *Ledger) Manifest(ctx context.Context, repo string, d digest.Digest) (Manifest, error) {
	var m Manifest
	err := l.view(ctx, func(tx *bolt.Tx) error {
		k := key(repo, string(d))
		v := tx.Bucket(bucketManifests).Get(k)
		if v == nil {
			return fmt.Errorf("manifest %s@%s: %w", repo, d, ErrNotFound)
		}
		var err error
		m, err = decodeManifest(k, v)
		return err
	})
	return m, err
}

// Manifests returns the manifest records of repo, sorted by digest.
func (l *Ledger) Manifests(ctx context.Context, repo string) ([]Manifest, error) {
	var out []Manifest
	err := l.view(ctx, func(tx *bolt.Tx) error {
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

// RecordPulls records a batch of pulls in one transaction, keeping for each
// (repository, digest) the latest time seen.
func (l *Ledger) RecordPulls(ctx context.Context, pulls []Pull) error {
	for _, p := range pulls {
		if err := checkPull(p); err != nil {
			return err
		}
	}
	if len(pulls) == 0 {
		return nil
	}
	return l.update(ctx, func(tx *bolt.Tx) error {
		for _, p := range pulls {
			if err := putPull(tx, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// LastPulls returns, for every manifest of repo pulled at least once, the
// time (UTC) of its latest pull.
func (l *Ledger) LastPulls(ctx context.Context, repo string) (map[digest.Digest]time.Time, error) {
	out := map[digest.Digest]time.Time{}
	err := l.view(ctx, func(tx *bolt.Tx) error {
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

func putManifest(tx *bolt.Tx, m Manifest) error {
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode manifest %s@%s: %w", m.Repo, m.Digest, err)
	}
	return tx.Bucket(bucketManifests).Put(key(m.Repo, string(m.Digest)), v)
}

func decodeManifest(k, v []byte) (Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(v, &m); err != nil {
		return Manifest{}, fmt.Errorf("manifest %q: %w: %w", k, ErrCorrupt, err)
	}
	return m, nil
}

func checkManifest(m Manifest) error {
	if err := checkName("repository", m.Repo); err != nil {
		return err
	}
	return checkDigest("manifest digest", m.Digest)
}

// putPull stores p unless a later pull of the same manifest is recorded.
func putPull(tx *bolt.Tx, p Pull) error {
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
		return time.Time{}, fmt.Errorf("pull %q: value of %d bytes: %w", k, len(v), ErrCorrupt)
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC(), nil
}

// minPull and maxPull bound the times a pull record can hold (Unix
// nanoseconds in an int64).
var (
	minPull = time.Unix(0, 0)
	maxPull = time.Unix(0, 1<<63-1)
)

func checkPull(p Pull) error {
	if err := checkName("repository", p.Repo); err != nil {
		return err
	}
	if err := checkDigest("pulled digest", p.Digest); err != nil {
		return err
	}
	if p.At.Before(minPull) || p.At.After(maxPull) {
		return fmt.Errorf("pull of %s@%s at %s: out of range: %w", p.Repo, p.Digest, p.At, ErrInvalid)
	}
	return nil
}
