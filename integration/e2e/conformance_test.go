//go:build e2e

package e2e

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"

	"github.com/taglock/taglock/integration/internal/proc"
)

// Repositories the conformance program writes to.
const (
	conformanceRepo1 = "conformance/repo1"
	conformanceRepo2 = "conformance/repo2"
)

// mutableConformance makes the conformance repositories mutable by policy:
// the suite re-pushes fixed tags with new content and deletes them.
const mutableConformance = `immutability:
  default: immutable
  rules:
    - repositories: ["conformance/**"]
      mode: mutable
    - tags: ["latest", "sha256-*", "*.sig", "*.att", "*.sbom"]
      mode: mutable
`

// conformanceResult is the summary of one conformance run, from its junit.xml.
type conformanceResult struct {
	Tests    int `xml:"tests,attr"`
	Failures int `xml:"failures,attr"`
	Errors   int `xml:"errors,attr"`
	Skipped  int `xml:"skipped,attr"`
	Disabled int `xml:"disabled,attr"`
	Suites   []struct {
		Cases []conformanceCase `xml:"testcase"`
	} `xml:"testsuite"`
	dir    string
	output string
}

// conformanceCase is one test case of a conformance run.
type conformanceCase struct {
	Name   string `xml:"name,attr"`
	Status string `xml:"status,attr"` // passed, failure, error, skipped
	Out    string `xml:"system-out"`  // why it failed
}

// passed is how many cases passed.
func (r conformanceResult) passed() int {
	return r.Tests - r.Failures - r.Errors - r.Skipped - r.Disabled
}

// failed returns the cases that failed or erred.
func (r conformanceResult) failed() []conformanceCase {
	var out []conformanceCase
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			if c.Status == "failure" || c.Status == "error" {
				out = append(out, c)
			}
		}
	}
	return out
}

// runConformance runs the OCI conformance program against the plain-HTTP
// registry at addr with the `distribution` profile: the features CNCF
// Distribution v3.1.2 lacks (referrers API, OCI-Subject, sha512,
// non-distributable layers) switched off. It returns the counts the program
// reported, whatever its exit status.
func runConformance(t *testing.T, addr string) conformanceResult {
	t.Helper()
	bin := proc.Tool(t, "CONFORMANCE_BIN")
	dir := t.TempDir()
	results := filepath.Join(dir, "results")
	c := command{
		bin:  bin,
		dir:  dir, // the program also reads ./oci-conformance.yaml: keep it in an empty directory
		drop: []string{"OCI_"},
		env: []string{
			"OCI_REGISTRY=" + addr, "OCI_TLS=disabled", "OCI_VERSION=1.1", "OCI_LOG=warn",
			"OCI_RESULTS_DIR=" + results,
			"OCI_REPO1=" + conformanceRepo1, "OCI_REPO2=" + conformanceRepo2,
			"OCI_API_REFERRER=false", "OCI_DATA_SUBJECT=false", "OCI_DATA_SUBJECT_MISSING=false",
			"OCI_DATA_SUBJECT_LIST=false", "OCI_DATA_SHA512=false", "OCI_DATA_NONDISTRIBUTABLE=false",
		},
	}
	out, _ := run(t, c) // non-zero on any failure: the counts below tell
	raw, err := os.ReadFile(filepath.Join(results, "junit.xml"))
	if err != nil {
		t.Fatalf("the conformance program wrote no junit.xml: %v\n%s", err, indent(out))
	}
	var r conformanceResult
	if err := xml.Unmarshal(raw, &r); err != nil {
		t.Fatalf("parse junit.xml: %v", err)
	}
	r.dir, r.output = results, out
	t.Logf("conformance through %s: %d tests, %d failures, %d errors, %d skipped, %d disabled (report: %s)",
		addr, r.Tests, r.Failures, r.Errors, r.Skipped, r.Disabled, filepath.Join(results, "report.html"))
	if r.Tests == 0 {
		t.Fatalf("the conformance program ran no test:\n%s", indent(out))
	}
	return r
}

// TestConformance ensures that taglock, in front of its embedded registry and
// in front of a separate Distribution upstream, passes the OCI conformance
// suite with 0 failures when the suite's repositories are mutable by policy,
// and that with them immutable the suite's moves and deletes are refused
// while every tag the ledger records still agrees with the registry.
func TestConformance(t *testing.T) {
	for _, mode := range []string{"embedded", "upstream"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			upstream := func(t *testing.T) string {
				if mode == "embedded" {
					return ""
				}
				return "http://" + proc.StartRegistry(t, "info").Addr
			}

			t.Run("mutable by policy", func(t *testing.T) {
				up := upstream(t)
				tl := startTaglock(t, serveOptions{config: mutableConformance, upstream: up})
				r := runConformance(t, tl.Addr)
				if r.Failures != 0 || r.Errors != 0 {
					t.Errorf("conformance through taglock (%s): %d failures, %d errors; want 0\n%s",
						mode, r.Failures, r.Errors, indent(r.output))
				}
				if up == "" {
					return
				}
				// The same suite straight against the upstream: taglock must
				// pass exactly what the registry itself passes.
				direct := runConformance(t, strings.TrimPrefix(up, "http://"))
				if r.passed() != direct.passed() || r.Tests != direct.Tests {
					t.Errorf("conformance through taglock passed %d of %d, straight against the upstream %d of %d",
						r.passed(), r.Tests, direct.passed(), direct.Tests)
				}
			})

			t.Run("immutable", func(t *testing.T) {
				up := upstream(t)
				tl := startTaglock(t, serveOptions{upstream: up}) // no config: the built-in defaults
				r := runConformance(t, tl.Addr)
				if r.Failures == 0 {
					t.Errorf("conformance against immutable repositories reported no failures: its tag moves and deletes were not refused")
				}
				// Every failure is a refusal (403), or the suite reading back a
				// tag whose move was refused and finding the original there.
				refused := 0
				for _, c := range r.failed() {
					switch {
					case strings.Contains(c.Out, "received 403"):
						refused++
					case strings.HasPrefix(c.Out, "manifest get failed"), strings.HasPrefix(c.Out, "manifest head failed"):
					default:
						t.Errorf("conformance case %q failed for another reason than a refusal: %s", c.Name, c.Out)
					}
				}
				if refused == 0 {
					t.Errorf("no conformance failure was a 403 refusal (%d failures)", r.Failures)
				}
				tl.Stop(t)
				bindings := ledgerBindings(t, filepath.Join(tl.Data, "ledger.db"))

				// The registry to compare with: the upstream itself, or, in
				// embedded mode, the embedded registry behind a fresh taglock
				// on the same data directory (which also shows the ledger
				// survives a restart).
				host := ""
				if up != "" {
					host = strings.TrimPrefix(up, "http://")
				} else {
					host = startTaglock(t, serveOptions{data: tl.Data}).Addr
				}
				checked := 0
				for _, b := range bindings {
					if b.Deleted {
						continue
					}
					got, err := lookup(t, host, b.Repo, b.Tag)
					switch {
					case err != nil:
						t.Errorf("ledger binds %s:%s to %s (%s), but the registry does not serve it: %v", b.Repo, b.Tag, b.Digest, b.Mode, err)
					case got != b.Digest.String():
						t.Errorf("ledger binds %s:%s to %s (%s), the registry serves %s", b.Repo, b.Tag, b.Digest, b.Mode, got)
					}
					if b.Mode == policy.Immutable {
						checked++
					}
				}
				if checked == 0 {
					t.Errorf("the ledger holds no live immutable binding after the conformance run (%d bindings in all)", len(bindings))
				}
				t.Logf("%d refusals; %d ledger bindings, %d of them live and immutable, all agree with the registry", refused, len(bindings), checked)
			})
		})
	}
}

// ledgerBindings opens the ledger at path read-only (taglock must have
// stopped) and returns every binding of every repository.
func ledgerBindings(t *testing.T, path string) []storage.Binding {
	t.Helper()
	l, err := bolt.Open(path, bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open ledger: %v", err)
	}
	defer func() {
		if err := l.Close(); err != nil {
			t.Errorf("close ledger: %v", err)
		}
	}()
	repos, err := l.Repositories(t.Context())
	if err != nil {
		t.Fatalf("ledger repositories: %v", err)
	}
	var all []storage.Binding
	for _, repo := range repos {
		bs, err := l.Bindings(t.Context(), repo)
		if err != nil {
			t.Fatalf("ledger bindings of %s: %v", repo, err)
		}
		all = append(all, bs...)
	}
	return all
}
