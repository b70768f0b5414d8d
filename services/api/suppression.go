package api

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postflow/postflow/pkg/suppression"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// suppressionServer implements SuppressionService over the tenant's list.
type suppressionServer struct {
	postflowv1.UnimplementedSuppressionServiceServer
	store  *suppression.Store
	tenant string
	now    func() time.Time
	log    *slog.Logger
}

// address validates and normalizes a request's address field.
func address(addr string) (string, error) {
	norm, err := suppression.Normalize(addr)
	if err != nil {
		return "", badField("address", err.Error())
	}
	return norm, nil
}

func (s *suppressionServer) AddSuppression(ctx context.Context, req *postflowv1.AddSuppressionRequest) (*postflowv1.AddSuppressionResponse, error) {
	addr, err := address(req.GetAddress())
	if err != nil {
		return nil, err
	}
	if _, ok := postflowv1.SuppressionReason_name[int32(req.GetReason())]; !ok || req.GetReason() == postflowv1.SuppressionReason_SUPPRESSION_REASON_UNSPECIFIED {
		return nil, badField("reason", "required: bounce, complaint, unsubscribe or manual")
	}
	if len(req.GetDetail()) > 1000 {
		return nil, badField("detail", "at most 1000 octets")
	}
	if exp := req.GetExpiresAt(); exp != nil {
		if exp.CheckValid() != nil || !exp.AsTime().After(s.now()) {
			return nil, badField("expires_at", "must be a valid time in the future")
		}
	}
	e, err := s.store.Add(ctx, s.tenant, &postflowv1.Suppression{
		Address:   addr,
		Reason:    req.GetReason(),
		Detail:    req.GetDetail(),
		CreatedAt: timestamppb.New(s.now()),
		ExpiresAt: req.GetExpiresAt(),
	})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	s.log.InfoContext(ctx, "api: suppression added", slog.String("reason", req.GetReason().String()))
	return &postflowv1.AddSuppressionResponse{Suppression: e}, nil
}

func (s *suppressionServer) RemoveSuppression(ctx context.Context, req *postflowv1.RemoveSuppressionRequest) (*postflowv1.RemoveSuppressionResponse, error) {
	addr, err := address(req.GetAddress())
	if err != nil {
		return nil, err
	}
	removed, err := s.store.Remove(ctx, s.tenant, addr)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &postflowv1.RemoveSuppressionResponse{Removed: removed}, nil
}

func (s *suppressionServer) CheckSuppression(ctx context.Context, req *postflowv1.CheckSuppressionRequest) (*postflowv1.CheckSuppressionResponse, error) {
	addr, err := address(req.GetAddress())
	if err != nil {
		return nil, err
	}
	e, err := s.store.Get(ctx, s.tenant, addr)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &postflowv1.CheckSuppressionResponse{Suppressed: e != nil, Suppression: e}, nil
}

func (s *suppressionServer) ListSuppressions(ctx context.Context, req *postflowv1.ListSuppressionsRequest) (*postflowv1.ListSuppressionsResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	if _, ok := postflowv1.SuppressionReason_name[int32(req.GetReason())]; !ok {
		return nil, badField("reason", "unknown reason")
	}
	list, next, err := s.store.List(ctx, s.tenant, req.GetReason(), req.GetPageToken(), size)
	if errors.Is(err, suppression.ErrBadPageToken) {
		return nil, badField("page_token", "not a token this service returned")
	}
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &postflowv1.ListSuppressionsResponse{Suppressions: list, NextPageToken: next}, nil
}

func (s *suppressionServer) fail(ctx context.Context, err error) error {
	if errors.Is(err, suppression.ErrInvalidArgument) {
		return badField("address", err.Error())
	}
	s.log.WarnContext(ctx, "api: suppression store", slog.Any("error", err))
	return unavailable("suppression list unavailable: retry")
}

// pageSize validates a page_size field: 0 means 100, at most 1000.
func pageSize(n int32) (int, error) {
	switch {
	case n < 0 || n > 1000:
		return 0, badField("page_size", "must be between 0 and 1000")
	case n == 0:
		return 100, nil
	}
	return int(n), nil
}
