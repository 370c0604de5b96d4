package storage

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
	case b.Mode == ModeImmutable:
		c.Immutable += n
	case b.Mode == ModeMutable:
		c.Mutable += n
	case b.Mode == ModeWarn:
		c.Warn += n
	}
}

// ByMode returns the counts keyed by mode, tombstones under "deleted": the
// labels of the taglock_tags metric.
func (c Counts) ByMode() map[string]int64 {
	return map[string]int64{ModeImmutable: c.Immutable, ModeMutable: c.Mutable, ModeWarn: c.Warn, "deleted": c.Deleted}
}
