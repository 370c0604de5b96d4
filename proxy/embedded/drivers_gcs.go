//go:build gcs

package embedded

// Built with -tags gcs: Distribution's Google Cloud Storage driver.
import _ "github.com/distribution/distribution/v3/registry/storage/driver/gcs"

var optionalDrivers = []string{"gcs"}
