"""Seeing a network: ``overlays graph`` (a picture) and ``overlays ui`` (the same picture, live).

    live.live_graph(engine) / plan.plan_graph(topology)  ->  model.Graph  (pure data, no layout)
    render.render(graph, "svg" | "dot" | "mermaid" | "json")            (Graphviz lays it out)
    server.serve(...)                                                   (a page fed by the store's watch)

The modules are imported by what needs them: ``graph`` never loads the web server.
"""
