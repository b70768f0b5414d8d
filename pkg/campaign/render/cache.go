package render

import (
	"container/list"
	"sync"

	"golang.org/x/sync/singleflight"
)

// DefaultCacheSize is the capacity NewCache uses for a size below 1.
const DefaultCacheSize = 256

// Cache holds parsed Templates by key (a campaign id) so that a worker
// parses each campaign's template once. It keeps the size most recently
// used entries, and is safe for concurrent use.
//
// A key must always name the same Source and Limits: entries are never
// reloaded, only evicted. Errors are not cached: the next Get of the key
// loads again. A *ParseError from Get means the stored campaign cannot
// render at all; the caller should fail the campaign rather than go on
// calling Get for each recipient.
type Cache struct {
	size  int
	group singleflight.Group

	mu    sync.Mutex
	lru   *list.List // of *cacheEntry, most recently used first
	items map[string]*list.Element
}

type cacheEntry struct {
	key string
	t   *Template
}

// NewCache returns a cache of at most size templates (DefaultCacheSize if
// size < 1).
func NewCache(size int) *Cache {
	if size < 1 {
		size = DefaultCacheSize
	}
	return &Cache{size: size, lru: list.New(), items: map[string]*list.Element{}}
}

// Get returns the template cached under key, or loads its source with load,
// parses it and caches it. Concurrent Gets of a missing key share one call
// of load and Parse.
func (c *Cache) Get(key string, load func() (Source, Limits, error)) (*Template, error) {
	if t := c.lookup(key); t != nil {
		return t, nil
	}
	v, err, _ := c.group.Do(key, func() (any, error) {
		// A flight that finished between lookup and Do has cached the key.
		if t := c.lookup(key); t != nil {
			return t, nil
		}
		src, lim, err := load()
		if err != nil {
			return nil, err
		}
		t, err := Parse(src, lim)
		if err != nil {
			return nil, err
		}
		c.add(key, t)
		return t, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Template), nil
}

func (c *Cache) lookup(key string) *Template {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[key]
	if !ok {
		return nil
	}
	c.lru.MoveToFront(e)
	return e.Value.(*cacheEntry).t
}

func (c *Cache) add(key string, t *Template) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		e.Value.(*cacheEntry).t = t
		c.lru.MoveToFront(e)
		return
	}
	c.items[key] = c.lru.PushFront(&cacheEntry{key: key, t: t})
	for c.lru.Len() > c.size {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.items, oldest.Value.(*cacheEntry).key)
	}
}
