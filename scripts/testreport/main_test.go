package main

import (
	"strings"
	"testing"
)

// stream joins go test -json events, one per line.
func stream(events ...string) string { return strings.Join(events, "\n") + "\n" }

// TestReport ensures that the report counts tests by outcome (subtests
// included), shows the output of failed tests and build errors but not the
// logs of passing tests, and keeps go test's own ok/FAIL package lines.
func TestReport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		in         string
		want       totals
		wantOut    []string
		notWantOut []string
	}{
		{
			name: "passing package",
			in: stream(
				`{"Action":"start","Package":"p"}`,
				`{"Action":"run","Package":"p","Test":"TestA"}`,
				`{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}`,
				`{"Action":"output","Package":"p","Test":"TestA","Output":"    a_test.go:1: chatter\n"}`,
				`{"Action":"output","Package":"p","Test":"TestA","Output":"--- PASS: TestA (0.00s)\n"}`,
				`{"Action":"pass","Package":"p","Test":"TestA"}`,
				`{"Action":"output","Package":"p","Output":"PASS\n"}`,
				`{"Action":"output","Package":"p","Output":"ok  \tp\t0.01s\n"}`,
				`{"Action":"pass","Package":"p"}`,
			),
			want:       totals{Passed: 1},
			wantOut:    []string{"ok  \tp\t0.01s\n", "tests: 1 passed, 0 failed, 0 skipped\n"},
			notWantOut: []string{"chatter", "=== RUN", "PASS\n"},
		},
		{
			name: "failing subtest",
			in: stream(
				`{"Action":"run","Package":"p","Test":"TestB"}`,
				`{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:1: context\n"}`,
				`{"Action":"run","Package":"p","Test":"TestB/ok"}`,
				`{"Action":"output","Package":"p","Test":"TestB/ok","Output":"    b_test.go:2: fine\n"}`,
				`{"Action":"pass","Package":"p","Test":"TestB/ok"}`,
				`{"Action":"run","Package":"p","Test":"TestB/bad"}`,
				`{"Action":"output","Package":"p","Test":"TestB/bad","Output":"    b_test.go:3: boom\n"}`,
				`{"Action":"output","Package":"p","Test":"TestB/bad","Output":"--- FAIL: TestB/bad (0.00s)\n"}`,
				`{"Action":"fail","Package":"p","Test":"TestB/bad"}`,
				`{"Action":"skip","Package":"p","Test":"TestB/later"}`,
				`{"Action":"fail","Package":"p","Test":"TestB"}`,
				`{"Action":"output","Package":"p","Output":"FAIL\tp\t0.02s\n"}`,
				`{"Action":"fail","Package":"p"}`,
			),
			want:       totals{Passed: 1, Failed: 2, Skipped: 1, PackagesFailed: 1},
			wantOut:    []string{"b_test.go:1: context", "b_test.go:3: boom", "--- FAIL: TestB/bad", "FAIL\tp\t0.02s"},
			notWantOut: []string{"fine"},
		},
		{
			name: "build failure",
			in: stream(
				`{"ImportPath":"p [p.test]","Action":"build-output","Output":"# p [p.test]\n"}`,
				`{"ImportPath":"p [p.test]","Action":"build-output","Output":"p/x_test.go:3:28: undefined: y\n"}`,
				`{"ImportPath":"p [p.test]","Action":"build-fail"}`,
				`{"Action":"output","Package":"p","Output":"FAIL\tp [build failed]\n"}`,
				`{"Action":"fail","Package":"p","FailedBuild":"p [p.test]"}`,
			),
			want:    totals{PackagesFailed: 1},
			wantOut: []string{"undefined: y", "FAIL\tp [build failed]"},
		},
		{
			name: "killed mid-package and plain lines",
			in: stream(
				`go: downloading example.com/m v1.0.0`,
				`{"Action":"run","Package":"p","Test":"TestC"}`,
				`{"Action":"output","Package":"p","Test":"TestC","Output":"    c_test.go:1: last words\n"}`,
			),
			want:    totals{PackagesFailed: 1},
			wantOut: []string{"go: downloading example.com/m v1.0.0\n", "last words"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out strings.Builder
			got, err := report(strings.NewReader(tc.in), &out)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("totals = %+v, want %+v", got, tc.want)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("report lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.notWantOut {
				if strings.Contains(out.String(), w) {
					t.Errorf("report shows %q, which only a failure should show:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestVerdict ensures that a run fails on any failure, on too few tests and,
// when asked, on any skip, and passes otherwise.
func TestVerdict(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		t      totals
		min    int
		noSkip bool
		fail   bool
	}{
		{name: "all passed", t: totals{Passed: 3}, min: 1},
		{name: "a test failed", t: totals{Passed: 3, Failed: 1}, min: 1, fail: true},
		{name: "a package failed to build", t: totals{Passed: 3, PackagesFailed: 1}, min: 1, fail: true},
		{name: "nothing ran", t: totals{}, min: 1, fail: true},
		{name: "fewer than expected", t: totals{Passed: 4}, min: 5, fail: true},
		{name: "skip allowed", t: totals{Passed: 2, Skipped: 1}, min: 1},
		{name: "skip refused", t: totals{Passed: 2, Skipped: 1}, min: 1, noSkip: true, fail: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			why := verdict(tc.t, tc.min, tc.noSkip)
			if (why != "") != tc.fail {
				t.Errorf("verdict(%+v, min %d, noSkip %v) = %q, want failure %v", tc.t, tc.min, tc.noSkip, why, tc.fail)
			}
		})
	}
}
