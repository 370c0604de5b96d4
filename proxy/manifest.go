package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"strings"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultMaxManifestSize is the largest manifest taglock accepts or reads
// unless Options.MaxManifestSize says otherwise: 4 MiB, what the
// distribution spec recommends registries support.
const DefaultMaxManifestSize = 4 << 20

// Media types whose entries are manifests rather than blobs.
const (
	mediaTypeDockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerV2   = "application/vnd.docker.distribution.manifest.v2+json"
)

// mediaTypeDockerConfig is the config blob of a Docker schema 2 image.
const mediaTypeDockerConfig = "application/vnd.docker.container.image.v1+json"

// manifestAccept is the full Accept list for manifest lookups: without the
// OCI types some registries answer 404 for OCI manifests. It is the one
// list of manifest media types taglock asks for.
var manifestAccept = []string{
	v1.MediaTypeImageManifest,
	v1.MediaTypeImageIndex,
	mediaTypeDockerV2,
	mediaTypeDockerList,
	"application/vnd.docker.distribution.manifest.v1+prettyjws",
	"application/vnd.docker.distribution.manifest.v1+json",
	"application/vnd.oci.artifact.manifest.v1+json",
}

// ManifestAccept is the Accept header value for a manifest lookup that
// takes every manifest media type taglock knows.
func ManifestAccept() string { return strings.Join(manifestAccept, ", ") }

// manifestRefs is what a manifest references.
type manifestRefs struct {
	MediaType    string
	ArtifactType string
	Children     []digest.Digest // child manifests (index entries)
	Blobs        []digest.Digest // config, layers, artifact blobs
	Subject      digest.Digest
}

// rawManifest covers the fields of every manifest format that reference
// other content: image manifests and indexes (OCI and Docker), the
// withdrawn OCI artifact manifest, and Docker schema 1 (fsLayers).
type rawManifest struct {
	SchemaVersion *int            `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	ArtifactType  string          `json:"artifactType"`
	Config        *v1.Descriptor  `json:"config"`
	Layers        []v1.Descriptor `json:"layers"`
	Blobs         []v1.Descriptor `json:"blobs"`
	Manifests     []v1.Descriptor `json:"manifests"`
	Subject       *v1.Descriptor  `json:"subject"`
	FSLayers      []struct {
		BlobSum digest.Digest `json:"blobSum"`
	} `json:"fsLayers"`
}

// parseManifest reads what body references. contentType is the request's
// Content-Type, used when the body names no mediaType. Whether the upstream
// accepts the manifest is the upstream's decision; this only has to find
// every reference.
func parseManifest(contentType string, body []byte) (manifestRefs, error) {
	var m rawManifest
	if err := json.Unmarshal(body, &m); err != nil {
		return manifestRefs{}, fmt.Errorf("manifest is not valid JSON: %v", err)
	}
	if err := checkKeys(json.NewDecoder(bytes.NewReader(body)), false); err != nil {
		return manifestRefs{}, err
	}
	if m.SchemaVersion == nil {
		return manifestRefs{}, fmt.Errorf("manifest has no schemaVersion")
	}
	refs := manifestRefs{MediaType: m.MediaType, ArtifactType: m.ArtifactType}
	if ct, _, err := mime.ParseMediaType(contentType); err == nil && ct != "" && refs.MediaType == "" {
		refs.MediaType = ct
	}
	add := func(list *[]digest.Digest, d v1.Descriptor, what string) error {
		if err := d.Digest.Validate(); err != nil {
			return fmt.Errorf("%s has an invalid digest %q: %v", what, d.Digest, err)
		}
		*list = append(*list, d.Digest)
		return nil
	}
	if m.Config != nil {
		if err := add(&refs.Blobs, *m.Config, "config"); err != nil {
			return manifestRefs{}, err
		}
		if refs.ArtifactType == "" && !isImageConfig(m.Config.MediaType) {
			refs.ArtifactType = m.Config.MediaType
		}
	}
	for i, l := range m.Layers {
		if err := add(&refs.Blobs, l, fmt.Sprintf("layers[%d]", i)); err != nil {
			return manifestRefs{}, err
		}
	}
	for i, b := range m.Blobs {
		if err := add(&refs.Blobs, b, fmt.Sprintf("blobs[%d]", i)); err != nil {
			return manifestRefs{}, err
		}
	}
	for i, l := range m.FSLayers {
		if err := add(&refs.Blobs, v1.Descriptor{Digest: l.BlobSum}, fmt.Sprintf("fsLayers[%d]", i)); err != nil {
			return manifestRefs{}, err
		}
	}
	for i, c := range m.Manifests {
		if err := add(&refs.Children, c, fmt.Sprintf("manifests[%d]", i)); err != nil {
			return manifestRefs{}, err
		}
	}
	if m.Subject != nil {
		if err := m.Subject.Digest.Validate(); err != nil {
			return manifestRefs{}, fmt.Errorf("subject has an invalid digest %q: %v", m.Subject.Digest, err)
		}
		refs.Subject = m.Subject.Digest
	}
	return refs, nil
}

// isImageConfig reports whether mediaType is a container image config, OCI
// or Docker: a manifest with such a config is an image, not an artifact.
func isImageConfig(mediaType string) bool {
	return mediaType == v1.MediaTypeImageConfig || mediaType == mediaTypeDockerConfig
}

// refKeys are the member names through which a manifest references other
// content. encoding/json matches names case-insensitively and keeps the last
// of duplicated members; a registry that parses differently could then see
// references taglock does not, so such spellings are refused.
var refKeys = []string{
	"schemaVersion", "mediaType", "artifactType", "config", "layers", "blobs",
	"manifests", "subject", "fsLayers", "blobSum", "digest",
}

// checkKeys reads one JSON value from dec and refuses objects with a
// duplicated member name, or with a name that differs only in case from one
// of refKeys. Annotation maps may hold any names except duplicates. The body
// has already been decoded once, so its nesting depth is bounded.
func checkKeys(dec *json.Decoder, annotations bool) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("manifest is not valid JSON: %v", err)
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return fmt.Errorf("manifest is not valid JSON: %v", err)
			}
			key, _ := tok.(string)
			if seen[key] {
				return fmt.Errorf("manifest has the member %q twice", key)
			}
			seen[key] = true
			if !annotations {
				for _, k := range refKeys {
					if key != k && strings.EqualFold(key, k) {
						return fmt.Errorf("manifest has the member %q; the spec spells it %q", key, k)
					}
				}
			}
			if err := checkKeys(dec, key == "annotations"); err != nil {
				return err
			}
		}
		_, err = dec.Token() // '}'
	case json.Delim('['):
		for dec.More() {
			if err := checkKeys(dec, false); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
	}
	if err != nil {
		return fmt.Errorf("manifest is not valid JSON: %v", err)
	}
	return nil
}
