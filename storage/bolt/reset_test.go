package bolt

import "go.etcd.io/bbolt"

// ResetForTest empties l in place, as if it had just been created: every
// bucket goes, and the layout is made afresh. Opening a new file costs an
// fsync and a directory; this lets the fuzz test reuse one ledger for every
// input. It exists only in tests.
func (l *Ledger) ResetForTest() error {
	return l.db.Update(func(tx *bbolt.Tx) error {
		var names [][]byte
		if err := tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			names = append(names, append([]byte(nil), name...))
			return nil
		}); err != nil {
			return err
		}
		for _, name := range names {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		return createLayout(tx)
	})
}
