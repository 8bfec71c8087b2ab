# syntax=docker/dockerfile:1
# The customerloop binary (manager, worker, report, ...) on a distroless base: static,
# no shell, non-root. customerloop-dev, the local stack with its test control plane and
# broker, stays out of the image.

FROM golang:1.26 AS build
WORKDIR /src
# Build cache at a path of our choosing, mounted as a BuildKit cache below.
ENV GOCACHE=/cache/go-build
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/customerloop ./cmd/customerloop

FROM gcr.io/distroless/static:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="customerloop" \
      org.opencontainers.image.description="CustomerLoop: customers' usage events and plans from Kafka into ClickHouse, and plan against actual back to product teams" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/customerloop /customerloop
# The numeric user lets the kubelet check runAsNonRoot without resolving a name.
USER 65532:65532
ENTRYPOINT ["/customerloop"]
