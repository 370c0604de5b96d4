package view

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// list is a sorted list read the way the ledger's pages read it, counting
// the entries read.
type list struct {
	entries []string
	read    int
}

func (l *list) after(after string, limit int) ([]string, error) {
	i, _ := slices.BinarySearch(l.entries, after)
	for i < len(l.entries) && l.entries[i] <= after {
		i++
	}
	out := l.entries[i:min(i+limit, len(l.entries))]
	l.read += len(out)
	return out, nil
}

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("e%03d", i)
	}
	return out
}

func same(s string) string { return s }

// TestVisiblePagesAddUp ensures the pages of a list, each starting after
// the last entry of the one before, add up to the visible entries, none
// twice, with more reported exactly when another page follows, for every
// page size and whether the caller sees every entry, every third, or none.
func TestVisiblePagesAddUp(t *testing.T) {
	t.Parallel()
	all := names(50)
	for _, tc := range []struct {
		name string
		keep func(string) bool
	}{
		{"all", func(string) bool { return true }},
		{"every third", func(s string) bool { return s[len(s)-1]%3 == 0 }},
		{"none", func(string) bool { return false }},
	} {
		var want []string
		for _, e := range all {
			if tc.keep(e) {
				want = append(want, e)
			}
		}
		for n := 1; n <= 52; n++ {
			l := &list{entries: all}
			var got []string
			after, pages := "", 0
			for {
				page, more, err := Visible(n, after, l.after, same, tc.keep)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) > n {
					t.Fatalf("%s, n=%d: a page of %d", tc.name, n, len(page))
				}
				got = append(got, page...)
				pages++
				if !more {
					break
				}
				if len(page) == 0 {
					t.Fatalf("%s, n=%d: an empty page says more follow", tc.name, n)
				}
				after = page[len(page)-1]
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s, n=%d: pages add up to %v, want %v", tc.name, n, got, want)
			}
			if wantPages := max(1, (len(want)+n-1)/n); pages != wantPages {
				t.Errorf("%s, n=%d: %d pages, want %d", tc.name, n, pages, wantPages)
			}
		}
	}
}

// TestVisibleReadsWhatItShows ensures a caller who sees everything costs a
// read of one page and one entry more, not of the list.
func TestVisibleReadsWhatItShows(t *testing.T) {
	t.Parallel()
	l := &list{entries: names(1000)}
	page, more, err := Visible(10, "e100", l.after, same, func(string) bool { return true })
	if err != nil || !more || strings.Join(page, ",") != strings.Join(names(111)[101:], ",") {
		t.Fatalf("page %v, more %v, %v", page, more, err)
	}
	if l.read != 11 {
		t.Errorf("read %d entries for a page of 10, want 11", l.read)
	}
}

// TestPageSize ensures a page size is the default when not given and never
// more than MaxPage.
func TestPageSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ n, want int }{{0, DefaultPage}, {-3, DefaultPage}, {1, 1}, {MaxPage, MaxPage}, {MaxPage + 1, MaxPage}} {
		if got := PageSize(tc.n); got != tc.want {
			t.Errorf("PageSize(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}
