//! commerce's metric names.

actord_actors::declare_metrics! {
    counter COMMERCE_PUBLISHED_TOTAL = "actord_commerce_published_total":
        "Synthetic shop events published, by kind (user, product, order).";
    counter COMMERCE_ORDERS_SKIPPED_TOTAL = "actord_commerce_orders_skipped_total":
        "Order ticks that published nothing because the cache was empty.";
    counter COMMERCE_ORDERS_WAITING_TOTAL = "actord_commerce_orders_waiting_total":
        "Order batches held back because an order names a user or product not written yet.";
    counter COMMERCE_CACHE_REFRESHES_TOTAL = "actord_commerce_cache_refreshes_total":
        "Completed swaps of the user and product caches.";
    gauge COMMERCE_CACHE_ENTRIES = "actord_commerce_cache_entries":
        "Entries in a cache hash (cache = users | products).";
    gauge COMMERCE_REDIS_MEMORY_BYTES = "actord_commerce_redis_memory_bytes":
        "Memory Redis reports in use (used_memory).";
    gauge COMMERCE_REDIS_OPS_PER_SECOND = "actord_commerce_redis_ops_per_second":
        "Commands per second Redis reports (instantaneous_ops_per_sec).";
    gauge COMMERCE_REDIS_HIT_RATIO = "actord_commerce_redis_hit_ratio":
        "keyspace_hits / (keyspace_hits + keyspace_misses) as Redis reports them, 0..1.";
    counter COMMERCE_GRADE_CHANGES_TOTAL = "actord_commerce_grade_changes_total":
        "Users whose grade the grade updater changed.";
}
