# Multi-stage build: a static taglock binary on a minimal, non-root image.
#   docker build -t taglock .
#   docker run -p 5000:5000 -v taglock-data:/data taglock
# With the embedded registry's Google Cloud Storage driver:
#   docker build --build-arg GOTAGS=gcs -t taglock:gcs .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG GOTAGS=
RUN CGO_ENABLED=0 go build -trimpath -tags "${GOTAGS}" -ldflags "-s -w -X main.version=${VERSION}" -o /out/taglock ./cmd/taglock \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/taglock /usr/local/bin/taglock
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
VOLUME /data
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/taglock"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data", "/data"]
