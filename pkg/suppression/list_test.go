package suppression_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/postflow/postflow/pkg/suppression"
	postflowv1 "github.com/postflow/postflow/proto/postflow/v1"
)

// listAll pages through tenant's list with pageSize, calling between (when
// not nil) after each page but the last with the page's number, and returns
// how many times each address was listed.
func listAll(t testing.TB, st *suppression.Store, tenant string, reason postflowv1.SuppressionReason, pageSize int, between func(page int)) (map[string]int, error) {
	t.Helper()
	seen := make(map[string]int)
	token := ""
	for page := 0; ; page++ {
		if page > 100_000 {
			return nil, errors.New("listing does not end")
		}
		entries, next, err := st.List(t.Context(), tenant, reason, token, pageSize)
		if err != nil {
			return nil, fmt.Errorf("page %d: %w", page, err)
		}
		if len(entries) > pageSize {
			return nil, fmt.Errorf("page %d has %d entries, page size %d", page, len(entries), pageSize)
		}
		for _, e := range entries {
			if reason != anyReason && e.GetReason() != reason {
				return nil, fmt.Errorf("page %d: entry %v does not have reason %v", page, e, reason)
			}
			seen[e.GetAddress()]++
		}
		if next == "" {
			return seen, nil
		}
		if next == token {
			return nil, fmt.Errorf("page %d: next token equals its own token", page)
		}
		token = next
		if between != nil {
			between(page)
		}
	}
}

func TestListPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const n = 2500
	addMany(t, e.store, "acme", "example.com", n)
	addMany(t, e.store, "other", "example.com", 300) // interleaved in the stream, never listed

	for _, pageSize := range []int{100, 1000, 333} {
		seen, err := listAll(t, e.store, "acme", anyReason, pageSize, nil)
		if err != nil {
			t.Fatalf("page size %d: %v", pageSize, err)
		}
		if len(seen) != n {
			t.Errorf("page size %d: %d distinct entries, want %d", pageSize, len(seen), n)
		}
		for i := range n {
			addr := fmt.Sprintf("user%d@example.com", i)
			if seen[addr] != 1 {
				t.Fatalf("page size %d: %s listed %d times, want 1", pageSize, addr, seen[addr])
			}
		}
	}

	// Full pages: 2500 entries by 100 make 25 pages, the last one ending the
	// listing itself rather than leaving an empty 26th.
	token, pages := "", 0
	for {
		entries, next, err := e.store.List(t.Context(), "acme", anyReason, token, 100)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(entries) != 100 {
			t.Errorf("page %d has %d entries, want 100", pages, len(entries))
		}
		if next == "" {
			break
		}
		token = next
	}
	if pages != 25 {
		t.Errorf("%d pages of 100, want 25", pages)
	}

	// Limits: 0 means the default size, more than the maximum is capped.
	if entries, _, err := e.store.List(t.Context(), "acme", anyReason, "", 0); err != nil || len(entries) != suppression.DefaultPageSize {
		t.Errorf("List with limit 0: %d entries, %v; want %d", len(entries), err, suppression.DefaultPageSize)
	}
	if entries, _, err := e.store.List(t.Context(), "acme", anyReason, "", 5000); err != nil || len(entries) != suppression.MaxPageSize {
		t.Errorf("List with limit 5000: %d entries, %v; want %d", len(entries), err, suppression.MaxPageSize)
	}

	// An empty tenant has one empty last page.
	entries, next, err := e.store.List(t.Context(), "nobody", anyReason, "", 100)
	if err != nil || len(entries) != 0 || next != "" {
		t.Errorf("List of an empty tenant = %v, %q, %v", entries, next, err)
	}
}

func TestListReasonFilter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const n = 2500 // reasons cycle with i%4: bounce for i%4 == 0
	addMany(t, e.store, "acme", "example.com", n)
	for _, pageSize := range []int{100, 1000} {
		for r, reason := range []postflowv1.SuppressionReason{bounce, complaint, unsubscribe, manual} {
			seen, err := listAll(t, e.store, "acme", reason, pageSize, nil)
			if err != nil {
				t.Fatalf("%v, page size %d: %v", reason, pageSize, err)
			}
			want := 0
			for i := range n {
				if i%4 != r {
					continue
				}
				want++
				if addr := fmt.Sprintf("user%d@example.com", i); seen[addr] != 1 {
					t.Fatalf("%v, page size %d: %s listed %d times, want 1", reason, pageSize, addr, seen[addr])
				}
			}
			if len(seen) != want {
				t.Errorf("%v, page size %d: %d entries, want %d", reason, pageSize, len(seen), want)
			}
		}
	}
}

// TestListStableUnderChanges adds, removes and replaces entries between
// pages: every entry present throughout is listed exactly once, none is
// listed twice unless it was replaced, and a replaced one is not skipped.
func TestListStableUnderChanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	const n = 1000
	addMany(t, e.store, "acme", "example.com", n)

	// Entries i%10 == 1 are removed and i%10 == 2 replaced, a few per page,
	// 20 candidates a page in an order spread over the whole list, so some go
	// before the cursor and some after;
	// new entries are added throughout.
	touched := map[string]bool{}
	replaced := map[string]bool{}
	next := 0
	between := func(page int) {
		for range 20 {
			i := (next * 37) % n // a permutation of 0..n-1 (37 and 1000 are coprime)
			next++
			addr := fmt.Sprintf("user%d@example.com", i)
			switch i % 10 {
			case 1:
				if _, err := e.store.Remove(ctx, "acme", addr); err != nil {
					t.Fatal(err)
				}
				touched[addr] = true
			case 2:
				mustAdd(t, e.store, "acme", entry(addr, manual))
				touched[addr], replaced[addr] = true, true
			}
		}
		mustAdd(t, e.store, "acme", entry(fmt.Sprintf("new%d@example.com", page), complaint))
	}
	seen, err := listAll(t, e.store, "acme", anyReason, 100, between)
	if err != nil {
		t.Fatal(err)
	}
	if len(touched) == 0 {
		t.Fatal("the test changed nothing between pages")
	}
	for i := range n {
		addr := fmt.Sprintf("user%d@example.com", i)
		switch {
		case !touched[addr] && seen[addr] != 1:
			t.Errorf("%s, present throughout, listed %d times, want 1", addr, seen[addr])
		case replaced[addr] && seen[addr] == 0:
			t.Errorf("%s, replaced during the listing, was skipped", addr)
		}
	}
	for addr, c := range seen {
		if c > 1 && !replaced[addr] {
			t.Errorf("%s listed %d times", addr, c)
		}
	}
}

func TestListBadPageToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	addMany(t, e.store, "acme", "example.com", 3)
	_, valid, err := e.store.List(t.Context(), "acme", anyReason, "", 1)
	if err != nil || valid == "" {
		t.Fatalf("List = %q, %v; want a next-page token", valid, err)
	}
	for _, token := range []string{
		"garbage!",
		"AQ",                 // too short
		"AAAAAAAAAAAB",       // version 0
		"AgAAAAAAAAAB",       // version 2
		"AQAAAAAAAAAA",       // sequence 0
		"AQAAAAAAAAABAA",     // too long
		valid + "=",          // padding is not part of the format
		valid[:len(valid)-1], // truncated
	} {
		_, _, err := e.store.List(t.Context(), "acme", anyReason, token, 10)
		if !errors.Is(err, suppression.ErrBadPageToken) || !errors.Is(err, suppression.ErrInvalidArgument) {
			t.Errorf("List with token %q: error %v, want ErrBadPageToken", token, err)
		}
	}

	// A token past the end of the stream is valid and lists nothing.
	entries, next, err := e.store.List(t.Context(), "acme", anyReason, "AQ__________", 10)
	if err != nil || len(entries) != 0 || next != "" {
		t.Errorf("List past the end = %v, %q, %v; want an empty last page", entries, next, err)
	}
}
