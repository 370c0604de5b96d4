// Command testreport turns the event stream of `go test -json` back into the
// familiar go test output and adds what the plain output lacks: how many
// tests passed, failed and were skipped, and a failure when fewer tests ran
// than expected or when any was skipped. scripts/test.sh pipes every go test
// run through it, so that a suite that silently ran nothing, or skipped
// something, fails the run instead of passing it.
//
// Usage:
//
//	go test -json ./... | testreport [-min N] [-no-skip] [-counts FILE]
//
// It prints the output of failed tests, one ok/FAIL line per package, build
// errors as they come, and finally "tests: N passed, M failed, K skipped".
// It exits 1 when a test or package failed, when fewer than -min tests ran,
// or, with -no-skip, when a test was skipped. -counts appends
// "passed failed skipped" to FILE for a caller that adds several runs up.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output and build-fail events
}

// line is one output line, kept until its package ends.
type line struct {
	test string // "" for package-level output
	text string
}

// totals counts tests (subtests included) by outcome.
type totals struct {
	Passed, Failed, Skipped int
	// PackagesFailed counts packages that failed, including those whose
	// test binary did not build.
	PackagesFailed int
}

// report reads events from r, writes the human-readable report to w and
// returns the totals.
func report(r io.Reader, w io.Writer) (totals, error) {
	var t totals
	pending := map[string][]line{}         // package -> output so far
	failed := map[string]map[string]bool{} // package -> failed tests
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		raw := sc.Bytes()
		var e event
		if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &e) != nil {
			fmt.Fprintf(w, "%s\n", raw) // not an event: go's own messages
			continue
		}
		switch e.Action {
		case "build-output":
			fmt.Fprint(w, e.Output)
		case "output":
			if strings.HasPrefix(e.Output, "=== ") { // RUN, PAUSE, CONT, NAME
				continue
			}
			pending[e.Package] = append(pending[e.Package], line{test: e.Test, text: e.Output})
		case "pass", "fail", "skip":
			if e.Test != "" {
				switch e.Action {
				case "pass":
					t.Passed++
				case "fail":
					t.Failed++
					if failed[e.Package] == nil {
						failed[e.Package] = map[string]bool{}
					}
					failed[e.Package][e.Test] = true
				case "skip":
					t.Skipped++
				}
				continue
			}
			// The package ended: show what a plain `go test` shows.
			if e.Action == "fail" {
				t.PackagesFailed++
			}
			for _, l := range pending[e.Package] {
				switch {
				case l.test == "" && (l.text == "PASS\n" || l.text == "FAIL\n"):
				case l.test == "" || failed[e.Package][l.test]:
					fmt.Fprint(w, l.text)
				}
			}
			delete(pending, e.Package)
			delete(failed, e.Package)
		}
	}
	if err := sc.Err(); err != nil {
		return t, fmt.Errorf("read go test output: %w", err)
	}
	// A package that never ended (go test was killed): show what it printed.
	for _, lines := range pending {
		t.PackagesFailed++
		for _, l := range lines {
			fmt.Fprint(w, l.text)
		}
	}
	fmt.Fprintf(w, "tests: %d passed, %d failed, %d skipped\n", t.Passed, t.Failed, t.Skipped)
	return t, nil
}

// verdict says why the run fails, or "" when it passes.
func verdict(t totals, minTests int, noSkip bool) string {
	switch {
	case t.Failed > 0 || t.PackagesFailed > 0:
		return fmt.Sprintf("%d tests and %d packages failed", t.Failed, t.PackagesFailed)
	case t.Passed+t.Failed < minTests:
		return fmt.Sprintf("only %d tests ran, want at least %d", t.Passed+t.Failed, minTests)
	case noSkip && t.Skipped > 0:
		return fmt.Sprintf("%d tests were skipped, and nothing here may skip", t.Skipped)
	}
	return ""
}

func main() {
	minTests := flag.Int("min", 1, "fail unless at least this many tests ran")
	noSkip := flag.Bool("no-skip", false, "fail if any test was skipped")
	counts := flag.String("counts", "", "append \"passed failed skipped\" to this file")
	flag.Parse()

	t, err := report(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(1)
	}
	if *counts != "" {
		f, err := os.OpenFile(*counts, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = fmt.Fprintf(f, "%d %d %d\n", t.Passed, t.Failed, t.Skipped)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "testreport:", err)
			os.Exit(1)
		}
	}
	if why := verdict(t, *minTests, *noSkip); why != "" {
		fmt.Fprintln(os.Stderr, "testreport:", why)
		os.Exit(1)
	}
}
