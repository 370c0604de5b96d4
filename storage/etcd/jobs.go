package etcd

import (
	"context"
	"maps"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/taglock/taglock/storage"
)

// JobStates returns the job state whose names start with prefix, read at
// one revision (see storage.Ledger).
func (l *Ledger) JobStates(ctx context.Context, prefix string) (map[string][]byte, error) {
	ctx, cancel, err := l.bounded(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	out := map[string][]byte{}
	p := l.k.job(prefix)
	cut := len(l.k.job(""))
	_, err = l.scan(ctx, p, end(p), 0, false, func(kv *mvccpb.KeyValue) error {
		v := kv.Value
		if v == nil {
			v = []byte{} // stored empty, not deleted
		}
		out[string(kv.Key[cut:])] = v
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PutJobStates stores or deletes job state, as many values per transaction
// as fit one (see storage.Ledger).
func (l *Ledger) PutJobStates(ctx context.Context, values map[string][]byte) error {
	if err := storage.ValidJobStates(values); err != nil {
		return err
	}
	ctx, cancel, err := l.writable(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	t := &txn{}
	for _, name := range slices.Sorted(maps.Keys(values)) {
		v, k := values[name], l.k.job(name)
		if !t.fits(1, len(k)+len(v)+8) {
			if _, err := t.commit(ctx, l.kv); err != nil {
				return err
			}
			t = &txn{}
		}
		if v == nil {
			t.del(k)
		} else {
			t.put(k, string(v))
		}
	}
	if len(t.ops) == 0 {
		return nil
	}
	_, err = t.commit(ctx, l.kv)
	return err
}
