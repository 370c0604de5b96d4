package proxy

import (
	"reflect"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Content referenced by the manifests below.
var (
	cfgDigest    = digest.FromString("config")
	layerDigest1 = digest.FromString("layer 1")
	layerDigest2 = digest.FromString("layer 2")
	childDigest1 = digest.FromString("child 1")
	childDigest2 = digest.SHA512.FromString("child 2")
	subjDigest   = digest.FromString("subject")
	emptyDigest  = digest.Digest("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
)

// manifestCase is a manifest body and what parseManifest must find in it.
type manifestCase struct {
	name        string
	contentType string
	body        string
	want        manifestRefs
}

func manifestCases() []manifestCase {
	return []manifestCase{
		{
			name: "OCI image manifest",
			body: `{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "` + cfgDigest.String() + `", "size": 6},
  "layers": [
    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "` + layerDigest1.String() + `", "size": 7},
    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "` + layerDigest2.String() + `", "size": 7,
     "annotations": {"org.opencontainers.image.title": "two"}}
  ],
  "annotations": {"org.opencontainers.image.created": "2026-11-01T00:00:00Z"}
}`,
			want: manifestRefs{MediaType: v1.MediaTypeImageManifest, Blobs: []digest.Digest{cfgDigest, layerDigest1, layerDigest2}},
		},
		{
			name:        "OCI image manifest typed only by Content-Type",
			contentType: "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
			body: `{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cfgDigest.String() + `","size":6},` +
				`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"` + layerDigest1.String() + `","size":7}]}`,
			want: manifestRefs{MediaType: v1.MediaTypeImageManifest, Blobs: []digest.Digest{cfgDigest, layerDigest1}},
		},
		{
			name:        "body mediaType wins over Content-Type",
			contentType: mediaTypeDockerV2,
			body:        `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`,
			want:        manifestRefs{MediaType: v1.MediaTypeImageIndex},
		},
		{
			name:        "unparsable Content-Type is ignored",
			contentType: "not a media type;;",
			body:        `{"schemaVersion":2,"manifests":[]}`,
			want:        manifestRefs{},
		},
		{
			name: "OCI index",
			body: `{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "` + childDigest1.String() + `", "size": 500,
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "` + childDigest2.String() + `", "size": 501,
     "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}
  ]
}`,
			want: manifestRefs{MediaType: v1.MediaTypeImageIndex, Children: []digest.Digest{childDigest1, childDigest2}},
		},
		{
			name: "OCI index with subject and artifactType",
			body: `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","artifactType":"application/vnd.example.bundle",` +
				`"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + childDigest1.String() + `","size":5}],` +
				`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + subjDigest.String() + `","size":9}}`,
			want: manifestRefs{MediaType: v1.MediaTypeImageIndex, ArtifactType: "application/vnd.example.bundle",
				Children: []digest.Digest{childDigest1}, Subject: subjDigest},
		},
		{
			name: "Docker schema 2 manifest",
			body: `{
  "schemaVersion": 2,
  "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
  "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1470, "digest": "` + cfgDigest.String() + `"},
  "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 977, "digest": "` + layerDigest1.String() + `"}]
}`,
			want: manifestRefs{MediaType: mediaTypeDockerV2, Blobs: []digest.Digest{cfgDigest, layerDigest1}},
		},
		{
			name: "Docker manifest list",
			body: `{
  "schemaVersion": 2,
  "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
  "manifests": [
    {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528, "digest": "` + childDigest1.String() + `",
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528, "digest": "` + childDigest2.String() + `",
     "platform": {"architecture": "s390x", "os": "linux"}}
  ]
}`,
			want: manifestRefs{MediaType: mediaTypeDockerList, Children: []digest.Digest{childDigest1, childDigest2}},
		},
		{
			name: "Docker schema 1 manifest",
			body: `{"schemaVersion":1,"name":"a","tag":"v1","architecture":"amd64",` +
				`"fsLayers":[{"blobSum":"` + layerDigest2.String() + `"},{"blobSum":"` + layerDigest1.String() + `"}],` +
				`"history":[{"v1Compatibility":"{}"},{"v1Compatibility":"{}"}]}`,
			contentType: "application/vnd.docker.distribution.manifest.v1+prettyjws",
			want: manifestRefs{MediaType: "application/vnd.docker.distribution.manifest.v1+prettyjws",
				Blobs: []digest.Digest{layerDigest2, layerDigest1}},
		},
		{
			name: "artifact manifest with subject",
			body: `{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "artifactType": "application/vnd.example.sbom.v1+json",
  "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "` + emptyDigest.String() + `", "size": 2, "data": "e30="},
  "layers": [{"mediaType": "application/spdx+json", "digest": "` + layerDigest1.String() + `", "size": 7}],
  "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "` + subjDigest.String() + `", "size": 9},
  "annotations": {"org.opencontainers.image.created": "2026-11-01T00:00:00Z"}
}`,
			want: manifestRefs{MediaType: v1.MediaTypeImageManifest, ArtifactType: "application/vnd.example.sbom.v1+json",
				Blobs: []digest.Digest{emptyDigest, layerDigest1}, Subject: subjDigest},
		},
		{
			name: "config-only artifact",
			body: `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
				`"config":{"mediaType":"application/vnd.example.config.v1+json","digest":"` + cfgDigest.String() + `","size":6},"layers":[]}`,
			want: manifestRefs{MediaType: v1.MediaTypeImageManifest, ArtifactType: "application/vnd.example.config.v1+json",
				Blobs: []digest.Digest{cfgDigest}},
		},
		{
			name: "withdrawn OCI artifact manifest",
			body: `{"mediaType":"application/vnd.oci.artifact.manifest.v1+json","schemaVersion":2,"artifactType":"application/vnd.example.sig",` +
				`"blobs":[{"mediaType":"application/octet-stream","digest":"` + layerDigest1.String() + `","size":7}],` +
				`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + subjDigest.String() + `","size":9}}`,
			want: manifestRefs{MediaType: "application/vnd.oci.artifact.manifest.v1+json", ArtifactType: "application/vnd.example.sig",
				Blobs: []digest.Digest{layerDigest1}, Subject: subjDigest},
		},
		{
			name: "unknown members are ignored",
			body: `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","x-extension":{"layers":"not here"},` +
				`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cfgDigest.String() + `","size":6,"urls":["https://example.com/c"]}}`,
			want: manifestRefs{MediaType: v1.MediaTypeImageManifest, Blobs: []digest.Digest{cfgDigest}},
		},
		{
			name: "annotation names may differ only in case",
			body: `{"schemaVersion":2,"manifests":[],"annotations":{"Digest":"a","digest":"b","LAYERS":"c"}}`,
			want: manifestRefs{},
		},
	}
}

// TestParseManifestFindsReferences ensures every manifest format taglock
// meets yields exactly its media type, artifact type, blobs, children and
// subject.
func TestParseManifestFindsReferences(t *testing.T) {
	t.Parallel()
	for _, tc := range manifestCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseManifest(tc.contentType, []byte(tc.body))
			if err != nil {
				t.Fatalf("parseManifest: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parseManifest\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestParseManifestRefuses ensures manifests that are not JSON, have no
// schemaVersion, carry an invalid descriptor digest, or spell a referencing
// member so that two parsers could disagree are refused with an error that
// says which.
func TestParseManifestRefuses(t *testing.T) {
	t.Parallel()
	desc := func(d string) string {
		return `{"mediaType":"application/octet-stream","digest":"` + d + `","size":1}`
	}
	ok := cfgDigest.String()
	cases := []struct {
		name string
		body string
		want string // the whole error, or its prefix when it ends in "..."
	}{
		{"empty body", ``, "manifest is not valid JSON: unexpected end of JSON input"},
		{"not JSON", `not json`, "manifest is not valid JSON: invalid character 'o' in literal null (expecting 'u')"},
		{"truncated", `{"schemaVersion":2,`, "manifest is not valid JSON: unexpected end of JSON input"},
		{"trailing data", `{"schemaVersion":2} {}`, "manifest is not valid JSON: invalid character '{' after top-level value"},
		{"array", `[]`, "manifest is not valid JSON: json: cannot unmarshal array into Go value of type proxy.rawManifest"},
		{"wrong type", `{"schemaVersion":"2"}`, "manifest is not valid JSON: json: cannot unmarshal string into Go struct field rawManifest.schemaVersion of type int"},
		{"layers not a list", `{"schemaVersion":2,"layers":{}}`, "manifest is not valid JSON: json: cannot unmarshal object into Go struct field rawManifest.layers of type []v1.Descriptor"},
		{"missing schemaVersion", `{"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`, "manifest has no schemaVersion"},
		{"null schemaVersion", `{"schemaVersion":null}`, "manifest has no schemaVersion"},
		{"config digest too short", `{"schemaVersion":2,"config":` + desc("sha256:abc") + `}`,
			`config has an invalid digest "sha256:abc": invalid checksum digest length`},
		{"config digest missing", `{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":1}}`,
			`config has an invalid digest "": invalid checksum digest format`},
		{"layer digest upper-case", `{"schemaVersion":2,"layers":[` + desc(ok) + `,` + desc("sha256:"+strings.ToUpper(cfgDigest.Encoded())) + `]}`,
			`layers[1] has an invalid digest "sha256:` + strings.ToUpper(cfgDigest.Encoded()) + `": invalid checksum digest format`},
		{"layer digest unknown algorithm", `{"schemaVersion":2,"layers":[` + desc("md5:d41d8cd98f00b204e9800998ecf8427e") + `]}`,
			`layers[0] has an invalid digest "md5:d41d8cd98f00b204e9800998ecf8427e": unsupported digest algorithm`},
		{"artifact blob digest without algorithm", `{"schemaVersion":2,"blobs":[` + desc(cfgDigest.Encoded()) + `]}`,
			`blobs[0] has an invalid digest "` + cfgDigest.Encoded() + `": invalid checksum digest format`},
		{"child digest empty", `{"schemaVersion":2,"manifests":[` + desc(ok) + `,` + desc("") + `]}`,
			`manifests[1] has an invalid digest "": invalid checksum digest format`},
		{"child digest path", `{"schemaVersion":2,"manifests":[` + desc("sha256:../../x") + `]}`,
			`manifests[0] has an invalid digest "sha256:../../x": invalid checksum digest length`},
		{"subject digest invalid", `{"schemaVersion":2,"subject":` + desc("sha512:"+cfgDigest.Encoded()) + `}`,
			`subject has an invalid digest "sha512:` + cfgDigest.Encoded() + `": invalid checksum digest length`},
		{"schema 1 blobSum invalid", `{"schemaVersion":1,"fsLayers":[{"blobSum":"sha256:zz"}]}`,
			`fsLayers[0] has an invalid digest "sha256:zz": invalid checksum digest length`},
		{"duplicated layers", `{"schemaVersion":2,"layers":[` + desc(ok) + `],"layers":[]}`, `manifest has the member "layers" twice`},
		{"duplicated digest in a descriptor", `{"schemaVersion":2,"config":{"digest":"` + ok + `","digest":"` + layerDigest1.String() + `"}}`,
			`manifest has the member "digest" twice`},
		{"duplicated annotation", `{"schemaVersion":2,"annotations":{"a":"1","a":"2"}}`, `manifest has the member "a" twice`},
		{"case-variant layers", `{"schemaVersion":2,"layers":[` + desc(ok) + `],"Layers":[]}`,
			`manifest has the member "Layers"; the spec spells it "layers"`},
		{"case-variant manifests alone", `{"schemaVersion":2,"MANIFESTS":[` + desc(ok) + `]}`,
			`manifest has the member "MANIFESTS"; the spec spells it "manifests"`},
		{"case-variant digest in a layer", `{"schemaVersion":2,"layers":[{"Digest":"` + ok + `"}]}`,
			`manifest has the member "Digest"; the spec spells it "digest"`},
		{"Unicode case fold of schemaVersion", `{"\u017fchemaVersion":2}`,
			"manifest has the member \"\u017fchemaVersion\"; the spec spells it \"schemaVersion\""},
		{"long s in blobSum", `{"schemaVersion":1,"fsLayers":[{"blob\u017fum":"` + ok + `"}]}`,
			"manifest has the member \"blob\u017fum\"; the spec spells it \"blobSum\""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			refs, err := parseManifest(v1.MediaTypeImageManifest, []byte(tc.body))
			if err == nil {
				t.Fatalf("parseManifest accepted %s as %+v", tc.body, refs)
			}
			if err.Error() != tc.want {
				t.Fatalf("parseManifest error\n got %q\nwant %q", err, tc.want)
			}
		})
	}
}

// TestParseManifestAtSizeLimit ensures a manifest at the 4 MiB limit with
// thousands of layers is read in full.
func TestParseManifestAtSizeLimit(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString(`{"schemaVersion":2,"layers":[`)
	n := 0
	layer := `{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"` + layerDigest1.String() + `","size":7}`
	for b.Len()+len(layer)+3 < DefaultMaxManifestSize {
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString(layer)
		n++
	}
	b.WriteString(`]}`)
	refs, err := parseManifest("", []byte(b.String()))
	if err != nil {
		t.Fatalf("parseManifest: %v", err)
	}
	if len(refs.Blobs) != n || n < 10000 {
		t.Fatalf("found %d blobs, want %d (more than 10000)", len(refs.Blobs), n)
	}
}

// FuzzParseManifest ensures the manifest reader never panics and that every
// digest it returns is valid.
func FuzzParseManifest(f *testing.F) {
	for _, tc := range manifestCases() {
		f.Add(tc.contentType, []byte(tc.body))
	}
	for _, s := range []string{
		``, `{}`, `null`, `[]`, `{"schemaVersion":2}`, `{"schemaVersion":2,"subject":null,"config":null}`,
		`{"schemaVersion":2,"layers":[{"digest":"sha256:` + strings.Repeat("a", 64) + `"}],"Layers":[]}`,
		`{"schemaVersion":2,"manifests":[{"digest":"sha512:` + strings.Repeat("0", 128) + `"}]}`,
		`{"schemaVersion":1,"fsLayers":[{"blobSum":""}]}`, `{"schemaVersion":2,"annotations":{"a":{"b":[1,2,{"c":null}]}}}`,
		strings.Repeat("[", 100) + strings.Repeat("]", 100),
	} {
		f.Add("", []byte(s))
	}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		refs, err := parseManifest(contentType, body)
		if err != nil {
			return
		}
		for _, list := range [][]digest.Digest{refs.Blobs, refs.Children} {
			for _, d := range list {
				if err := d.Validate(); err != nil {
					t.Fatalf("returned digest %q: %v", d, err)
				}
			}
		}
		if refs.Subject != "" {
			if err := refs.Subject.Validate(); err != nil {
				t.Fatalf("returned subject %q: %v", refs.Subject, err)
			}
		}
	})
}
