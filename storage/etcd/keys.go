package etcd

import (
	"encoding/binary"
	"math"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/taglock/taglock/storage/internal/keys"
)

// keyspace is the ledger's key prefix; its methods build the keys of the
// layout documented in doc.go.
type keyspace string

func (k keyspace) key(section string, parts ...string) string {
	return string(k) + section + "/" + string(keys.Key(parts...))
}

func (k keyspace) prefix(section string, parts ...string) string {
	if len(parts) == 0 {
		return string(k) + section + "/"
	}
	return string(k) + section + "/" + string(keys.Prefix(parts...))
}

func (k keyspace) meta() string { return string(k) + "meta/version" }
func (k keyspace) seq() string  { return string(k) + "seq" }

func (k keyspace) binding(repo, tag string) string { return k.key("b", repo, tag) }
func (k keyspace) repo(repo string) string         { return k.key("repo", repo) }
func (k keyspace) ref(repo, d, tag, gen string) string {
	return k.key("ref", repo, d, tag, gen)
}
func (k keyspace) chunks(repo, tag, gen string) string { return k.prefix("chunk", repo, tag, gen) }
func (k keyspace) chunk(repo, tag, gen string, i int) string {
	return k.chunks(repo, tag, gen) + string(binary.BigEndian.AppendUint32(nil, uint32(i)))
}
func (k keyspace) event(seq uint64) string { return string(k) + "ev/" + string(keys.Seq(seq)) }
func (k keyspace) eventByRepo(repo string, seq uint64) string {
	return k.prefix("evr", repo) + inverted(seq)
}
func (k keyspace) eventByTag(repo, tag string, seq uint64) string {
	return k.prefix("evt", repo, tag) + inverted(seq)
}
func (k keyspace) eventByKind(kind string, seq uint64) string {
	return k.prefix("evk", kind) + inverted(seq)
}
func (k keyspace) reservation(id string) string { return k.key("res", id) }
func (k keyspace) reservedTag(repo, tag, id string) string {
	return k.key("rtag", repo, tag, id)
}
func (k keyspace) reservedDigests(repo, kind, id string) string {
	return k.key("rdig", repo, kind, id)
}
func (k keyspace) manifest(repo, d string) string { return k.key("mf", repo, d) }
func (k keyspace) pull(repo, d string) string     { return k.key("pull", repo, d) }

// job is the key of job state name, or the prefix of the names starting
// with name: names contain no NUL and are used as they are.
func (k keyspace) job(name string) string { return string(k) + "job/" + name }

// inverted encodes seq so that later events sort first: etcd ranges read
// keys in ascending order only (a descending sort makes the server read
// the whole range), so newest-first indexes store MaxUint64-seq.
func inverted(seq uint64) string {
	return string(binary.BigEndian.AppendUint64(nil, math.MaxUint64-seq))
}

// invertedSeq decodes the inverted seq that ends k.
func invertedSeq(k []byte) (uint64, bool) {
	s, ok := keys.SeqOf(k)
	return math.MaxUint64 - s, ok
}

// end returns the end of the range of keys starting with p.
func end(p string) string { return clientv3.GetPrefixRangeEnd(p) }
