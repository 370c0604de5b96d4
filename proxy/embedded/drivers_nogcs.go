//go:build !gcs

package embedded

// Built without -tags gcs: no optional driver.
var optionalDrivers []string
