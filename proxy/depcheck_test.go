package proxy

import (
	"go/build"
	"slices"
	"strings"
	"testing"
)

// allowedImports is everything outside the standard library proxy may
// import: the spec's types and error JSON, logging and metrics, and the
// module's own decisions, ledger contract and auth contract. proxy never
// imports the embedded registry (that is an Upstream handed in), the
// configuration, the auth implementations or a ledger backend: they depend
// on proxy's small interfaces, not the other way round.
var allowedImports = []string{
	"github.com/distribution/distribution/v3/registry/api/errcode",
	"github.com/opencontainers/go-digest",
	"github.com/opencontainers/image-spec/specs-go/v1",
	"github.com/prometheus/client_golang/prometheus",
	"github.com/rs/zerolog",
	"github.com/taglock/taglock/policy",
	"github.com/taglock/taglock/proxy/authn",
	"github.com/taglock/taglock/storage",
	"golang.org/x/sync/errgroup",
	"golang.org/x/sync/singleflight",
}

func TestProxyImportsOnlyItsContracts(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkg.Imports) == 0 {
		t.Fatal("no imports found: the test is not looking at proxy's sources")
	}
	for _, path := range pkg.Imports {
		first, _, _ := strings.Cut(path, "/")
		if !strings.Contains(first, ".") {
			continue // the standard library
		}
		if !slices.Contains(allowedImports, path) {
			t.Errorf("proxy imports %s; it may import only the standard library and %v", path, allowedImports)
		}
	}
}

func TestAuthnImportsNothingButPolicy(t *testing.T) {
	pkg, err := build.ImportDir("authn", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range pkg.Imports {
		first, _, _ := strings.Cut(path, "/")
		if strings.Contains(first, ".") && path != "github.com/taglock/taglock/policy" {
			t.Errorf("proxy/authn imports %s; the contract may import only the standard library and policy", path)
		}
	}
}
