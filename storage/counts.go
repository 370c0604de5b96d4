package storage

import (
	"bytes"
	"encoding/json"

	"github.com/taglock/taglock/policy"
)

// Counts is how many tags a ledger records, and in how many repositories
// (see Ledger.Counts).
type Counts struct {
	// Repositories counts the repositories with at least one binding.
	Repositories int64 `json:"repositories"`
	// Immutable, Mutable and Warn count the live bindings (not
	// tombstones) by the mode they were recorded with.
	Immutable int64 `json:"immutable"`
	Mutable   int64 `json:"mutable"`
	Warn      int64 `json:"warn"`
	// Deleted counts the tombstones, whatever their mode.
	Deleted int64 `json:"deleted"`
}

// Tags is the number of bindings, tombstones included.
func (c Counts) Tags() int64 { return c.Immutable + c.Mutable + c.Warn + c.Deleted }

// Live is the number of bindings that are not tombstones.
func (c Counts) Live() int64 { return c.Immutable + c.Mutable + c.Warn }

// Add counts b in c when n is 1, or takes it out when n is -1. It does not
// touch Repositories. A binding of an unknown mode counts nowhere, as
// NormalizeBindings refuses it.
func (c *Counts) Add(b Binding, n int64) {
	switch {
	case b.Deleted:
		c.Deleted += n
	case b.Mode == policy.Immutable:
		c.Immutable += n
	case b.Mode == policy.Mutable:
		c.Mutable += n
	case b.Mode == policy.Warn:
		c.Warn += n
	}
}

// The two fields AddJSON reads, as encoding/json writes them. Inside a
// JSON string a quote is always escaped, so neither can match within a
// value, and a binding has no nested object whose keys could.
var (
	modeField    = []byte(`"mode":"`)
	deletedField = []byte(`"deleted":true`)
)

// AddJSON counts in c, as Add(b, 1) would, the binding b whose JSON is v: a
// Binding as encoding/json writes it, or a backend's record that embeds
// one. It finds the mode and the tombstone flag without decoding the rest,
// which is many times faster for a binding that holds its manifest, and
// decodes only JSON it does not recognise. It reports false, counting
// nothing, when v does not decode.
func (c *Counts) AddJSON(v []byte) bool {
	if i := bytes.Index(v, modeField); i >= 0 {
		rest := v[i+len(modeField):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 {
			if mode, err := policy.ParseMode(string(rest[:j])); err == nil {
				c.Add(Binding{Mode: mode, Deleted: bytes.Contains(v, deletedField)}, 1)
				return true
			}
		}
	}
	var b struct {
		Mode    string `json:"mode"`
		Deleted bool   `json:"deleted"`
	}
	if err := json.Unmarshal(v, &b); err != nil {
		return false
	}
	mode, err := policy.ParseMode(b.Mode)
	if err != nil {
		mode = unknownMode
	}
	c.Add(Binding{Mode: mode, Deleted: b.Deleted}, 1)
	return true
}

// ByMode returns the counts keyed by mode, tombstones under "deleted": the
// labels of the taglock_tags metric.
func (c Counts) ByMode() map[string]int64 {
	return map[string]int64{policy.Immutable.String(): c.Immutable, policy.Mutable.String(): c.Mutable,
		policy.Warn.String(): c.Warn, "deleted": c.Deleted}
}

// unknownMode stands for a recorded mode that is none of the policy's: Add
// counts such a binding nowhere, unless it is a tombstone.
const unknownMode = policy.Mode(255)
