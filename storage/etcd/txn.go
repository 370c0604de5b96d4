package etcd

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd refuses a transaction with more than --max-txn-ops (default 128)
// compares or operations, or a request larger than --max-request-bytes
// (default 1.5 MiB). The ledger keeps within the defaults, so it works with
// any cluster that has not lowered them.
const (
	maxTxnOps       = 128
	maxRequestBytes = 1 << 20 // leaves room under 1.5 MiB for framing
)

// txn collects one transaction's compares and operations and keeps count
// of its size.
type txn struct {
	cmps   []clientv3.Cmp
	ops    []clientv3.Op
	orElse []clientv3.Op
	bytes  int
}

func (t *txn) cmp(key string, c clientv3.Cmp) {
	t.cmps = append(t.cmps, c)
	t.bytes += len(key) + 16
}

func (t *txn) put(k, v string) {
	t.ops = append(t.ops, clientv3.OpPut(k, v))
	t.bytes += len(k) + len(v) + 8
}

func (t *txn) del(k string) {
	t.ops = append(t.ops, clientv3.OpDelete(k))
	t.bytes += len(k) + 8
}

func (t *txn) delPrefix(p string) {
	t.ops = append(t.ops, clientv3.OpDelete(p, clientv3.WithPrefix()))
	t.bytes += 2*len(p) + 8
}

// onFailure adds a read to the else branch, to learn why the compares
// failed.
func (t *txn) onFailure(op clientv3.Op) { t.orElse = append(t.orElse, op) }

// size is the larger of the transaction's compare and operation counts.
func (t *txn) size() int { return max(len(t.cmps), len(t.ops), len(t.orElse)) }

// fits reports whether extra more operations of extraBytes would keep the
// transaction within etcd's limits.
func (t *txn) fits(extra, extraBytes int) bool {
	return t.size()+extra <= maxTxnOps && t.bytes+extraBytes <= maxRequestBytes
}

// commit sends the transaction.
func (t *txn) commit(ctx context.Context, kv clientv3.KV) (*clientv3.TxnResponse, error) {
	if len(t.cmps) > maxTxnOps || len(t.ops) > maxTxnOps || len(t.orElse) > maxTxnOps || t.bytes > maxRequestBytes {
		return nil, fmt.Errorf("a write of %d compares, %d operations and about %d bytes exceeds one etcd transaction (%d operations, %d bytes)",
			len(t.cmps), len(t.ops), t.bytes, maxTxnOps, maxRequestBytes)
	}
	return kv.Txn(ctx).If(t.cmps...).Then(t.ops...).Else(t.orElse...).Commit()
}

// get is one read: a key, or every key under a prefix.
type get struct {
	key    string
	prefix bool
}

// read runs gets as read-only transactions, all at one revision (rev, or
// now when rev is 0), at most maxTxnOps per transaction, and returns each
// get's key-values in order and the revision read.
// Each round trip is bounded by the request timeout.
func (l *Ledger) read(ctx context.Context, rev int64, gets []get) ([][]*mvccpb.KeyValue, int64, error) {
	out := make([][]*mvccpb.KeyValue, 0, len(gets))
	for start := 0; start == 0 || start < len(gets); start += maxTxnOps {
		batch := gets[start:min(start+maxTxnOps, len(gets))]
		ops := make([]clientv3.Op, len(batch))
		for i, g := range batch {
			var opts []clientv3.OpOption
			if g.prefix {
				opts = append(opts, clientv3.WithPrefix())
			}
			if rev > 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			ops[i] = clientv3.OpGet(g.key, opts...)
		}
		rctx, cancel := context.WithTimeout(ctx, l.timeout)
		resp, err := l.kv.Txn(rctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, r := range resp.Responses {
			out = append(out, r.GetResponseRange().Kvs)
		}
	}
	return out, rev, nil
}

// scan reads every key from start up to end (exclusive) at rev (0: now),
// in pages, calling fn for each, and returns the revision read. Each page
// is bounded by the request timeout.
func (l *Ledger) scan(ctx context.Context, start, end string, rev int64, keysOnly bool, fn func(*mvccpb.KeyValue) error) (int64, error) {
	return l.scanN(ctx, start, end, rev, keysOnly, 0, fn)
}

// scanN is scan of the first limit keys at most (every key when limit <=
// 0).
func (l *Ledger) scanN(ctx context.Context, start, end string, rev int64, keysOnly bool, limit int, fn func(*mvccpb.KeyValue) error) (int64, error) {
	const maxPage = 500
	for {
		page := maxPage
		if limit > 0 {
			page = min(page, limit)
		}
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(page))}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		rctx, cancel := context.WithTimeout(ctx, l.timeout)
		resp, err := l.kv.Get(rctx, start, opts...)
		cancel()
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv); err != nil {
				return rev, err
			}
		}
		if limit > 0 {
			if limit -= len(resp.Kvs); limit <= 0 {
				return rev, nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// withRev reads at rev, or now when rev is 0.
func withRev(rev int64) []clientv3.OpOption {
	if rev == 0 {
		return nil
	}
	return []clientv3.OpOption{clientv3.WithRev(rev)}
}
