package view

// Page sizes of the lists the API and the web page answer: no answer
// holds more than MaxPage entries, whatever the size of the ledger.
const (
	// DefaultPage is how many entries a list answers when the caller
	// does not say.
	DefaultPage = 100
	// MaxPage is the most entries one answer holds.
	MaxPage = 1000
)

// PageSize is n as a page size: DefaultPage when n is 0 or less, and at
// most MaxPage.
func PageSize(n int) int {
	if n <= 0 {
		return DefaultPage
	}
	return min(n, MaxPage)
}

// Visible returns the first n entries that keep accepts of a sorted list,
// starting after the entry named after, and whether the list holds more of
// them: one page of a list as a caller who may not see every entry sees
// it. read returns up to limit entries after the one named (all of the
// list's entries when it returns fewer), and name names an entry. The page
// ends on an entry the caller sees, so naming it as the next page's start
// reveals nothing hidden; hidden entries are read past, so a caller who
// sees few entries costs a read of the list (the repositories, or one
// repository's tags), never of the whole ledger.
func Visible[T any](n int, after string, read func(after string, limit int) ([]T, error), name func(T) string, keep func(T) bool) ([]T, bool, error) {
	var page []T
	chunk := n + 1 // one more than asked, to learn whether more follow
	for {
		got, err := read(after, chunk)
		if err != nil {
			return nil, false, err
		}
		for _, e := range got {
			if !keep(e) {
				continue
			}
			if len(page) == n {
				return page, true, nil
			}
			page = append(page, e)
		}
		if len(got) < chunk {
			return page, false, nil
		}
		after = name(got[len(got)-1])
		chunk = min(2*chunk, MaxPage)
	}
}
