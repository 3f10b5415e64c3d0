"""The gRPC servicers of the model capabilities (runtime/specs.py): one per capability, generic
over the model behind it. Every model service of a capability is served by the same class."""

from __future__ import annotations

import asyncio

import grpc

from archivetag.runtime.errors import NotServing, abort_with
from archivetag.runtime.model_service import ModelServiceApp, ocr_answer
from archivetag.v1 import common_pb2, tagger_pb2, tagger_pb2_grpc, view_type_pb2, view_type_pb2_grpc


class TaggerServicer(tagger_pb2_grpc.TaggerServiceServicer):
    def __init__(self, app: ModelServiceApp):
        self.app = app

    async def Tag(self, request: tagger_pb2.TagRequest, context: grpc.aio.ServicerContext) -> tagger_pb2.TagResponse:
        try:
            result, timings = await self.app.infer(request.image, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status in one place (errors.py)
            await abort_with(context, exc)
        identity = self.app.identity()
        return tagger_pb2.TagResponse(
            tags=[common_pb2.Tag(name=n, confidence=c, source_model=identity.name) for n, c in result.tags],
            caption=result.caption,
            model=identity,
            context=request.context,
            timings=timings,
            ocr=ocr_answer(request.ocr, result.ocr),
        )

    async def GetModelInfo(self, request, context) -> tagger_pb2.TaggerServiceGetModelInfoResponse:
        return tagger_pb2.TaggerServiceGetModelInfoResponse(
            model=self.app.identity(),
            state=self.app.state(),
            vocabulary_size=len(self.app.backend.vocabulary()),
            settings=self.app.settings_in_effect(),
        )


class ViewTypeServicer(view_type_pb2_grpc.ViewTypeServiceServicer):
    def __init__(self, app: ModelServiceApp):
        self.app = app

    async def Classify(self, request: view_type_pb2.ClassifyRequest, context) -> view_type_pb2.ClassifyResponse:
        try:
            result, timings = await self.app.infer(request.image, request, context)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc)
        return view_type_pb2.ClassifyResponse(
            view_type=result.view_type,
            confidence=result.confidence,
            scores=[view_type_pb2.ClassScore(name=n, probability=p, logit=logit) for n, p, logit in result.scores],
            embedding=result.embedding if request.include_embedding else [],
            model=self.app.identity(),
            timings=timings,
            labels=[view_type_pb2.LabelScore(name=n, probability=p, logit=logit)
                    for n, p, logit in getattr(result, "labels", ())],
        )

    async def EmbedText(self, request: view_type_pb2.ViewTypeServiceEmbedTextRequest,
                        context) -> view_type_pb2.ViewTypeServiceEmbedTextResponse:
        """Texts through the same batcher (and limits) as images; the backend tokenizes (prepare_text)."""
        app = self.app
        try:
            prepare_text = getattr(app.backend, "prepare_text", None)
            if prepare_text is None:
                raise NotServing(f"{app.backend.family} has no text tower: EmbedText is not available",
                                 metadata={"model": app.backend.family, "phase": "no_text_tower"})
            result, timings = await app.infer_prepared(
                lambda: asyncio.to_thread(prepare_text, list(request.texts)), context)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc)
        return view_type_pb2.ViewTypeServiceEmbedTextResponse(
            embeddings=[view_type_pb2.TextEmbedding(values=row.tolist()) for row in result.embeddings],
            model=app.identity(), logit_scale=result.logit_scale, logit_bias=result.logit_bias, timings=timings,
        )

    async def GetModelInfo(self, request, context) -> view_type_pb2.ViewTypeServiceGetModelInfoResponse:
        return view_type_pb2.ViewTypeServiceGetModelInfoResponse(
            model=self.app.identity(),
            state=self.app.state(),
            classes=self.app.backend.vocabulary(),
            settings=self.app.settings_in_effect(),
        )
